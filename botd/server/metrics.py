"""The reference server's Prometheus metrics (``botd_server_`` prefix), on a registry of
their own: what the server counts as it answers, and gauges read from the store."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..models import JOB_STATUSES
from .store import BOT_STATUSES, Store, StoreUnavailable

__all__ = ["ServerMetrics"]


class ServerMetrics:
    """The server's Prometheus metrics, on a registry of its own (``botd_server_`` prefix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claims = Counter("botd_server_claims_total", "Claim requests answered.", registry=r)
        self.jobs_claimed = Counter(
            "botd_server_jobs_claimed_total", "Jobs handed out under a lease.", registry=r
        )
        self.jobs_submitted = Counter(
            "botd_server_jobs_submitted_total", "Jobs created by submit.", registry=r
        )
        self.acks = Counter(
            "botd_server_acks_total", "Acks applied, by result.", ["status"], registry=r
        )
        self.lease_expiries = Counter(
            "botd_server_lease_expiries_total",
            "Leases ended without an ack (expired or dropped at re-registration).",
            registry=r,
        )
        self.jobs = Gauge("botd_server_jobs", "Jobs by status.", ["status"], registry=r)
        self.bots = Gauge("botd_server_bots", "Bots by status.", ["status"], registry=r)
        self.store_up = Gauge(
            "botd_server_store_up", "1 when the last store query succeeded.", registry=r
        )
        self.oldest_queued = Gauge(
            "botd_server_oldest_queued_job_age_seconds",
            "Age of the oldest queued job, by kind (absent when none is queued).",
            ["kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "botd_server_queue_depth",
            "Queued jobs that are due (claimable now), by kind (absent when none is due).",
            ["kind"],
            registry=r,
        )
        self.jobs_scheduled = Gauge(
            "botd_server_jobs_scheduled",
            "Queued jobs not yet due: delayed, or waiting out a retry's backoff.",
            registry=r,
        )
        self.claims_abandoned = Counter(
            "botd_server_claims_abandoned_total",
            "Long polls whose client went away; their leases, if any, were given back.",
            registry=r,
        )
        self.jobs_pruned = Counter(
            "botd_server_jobs_pruned_total",
            "Finished jobs deleted after the retention period.",
            registry=r,
        )
        #: ``acks``' child of each ack status, looked up once (not at every claim).
        self.ack_results = {
            status: self.acks.labels(status=status)
            for status in ("recorded", "duplicate", "conflict", "lease_lost", "unknown_lease")
        }

    async def refresh(self, store: Store) -> None:
        """Read the store's counts into the gauges; a failing store sets store_up 0."""
        try:
            stats = await store.stats()
            ages = await store.oldest_queued()
            depths = await store.queue_depth()
        except StoreUnavailable:
            self.store_up.set(0)
            return
        self.store_up.set(1)
        self.oldest_queued.clear()
        for kind, age in ages.items():
            self.oldest_queued.labels(kind=kind).set(age)
        self.queue_depth.clear()
        for kind, depth in depths.items():
            self.queue_depth.labels(kind=kind).set(depth)
        self.jobs_scheduled.set(stats.scheduled)
        for status in JOB_STATUSES:
            self.jobs.labels(status=status).set(stats.jobs.get(status, 0))
        for status in BOT_STATUSES:
            self.bots.labels(status=status).set(stats.bots.get(status, 0))
