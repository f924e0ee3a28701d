"""The stable ``event`` names of botd's key log lines: every one, in one place.

A key log line carries ``event``; operators filter on it, never on ``msg``.
``docs/operations.md`` documents each name (a test checks that the two agree), and code
names an event only through :class:`Event` (a test checks that no other literal is logged).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Event"]


class Event(StrEnum):
    """Every ``event`` name botd logs (see ``docs/operations.md`` for level, when and fields)."""

    # the lifecycle
    STATE_TRANSITION = "state_transition"
    REGISTERED = "registered"
    STARTUP_EXHAUSTED = "startup_exhausted"
    STARTUP_FAILED = "startup_failed"
    UNRECOVERABLE = "unrecoverable"
    BOT_ID_CONFLICT = "bot_id_conflict"
    SESSION_FILE_FAILED = "session_file_failed"
    INTERNAL_ERROR = "internal_error"
    CONFIG_ERROR = "config_error"
    UNKNOWN_SETTING = "unknown_setting"
    TOKEN_EXPOSED = "token_exposed"
    SIGNAL = "signal"
    DRAIN_SKIPPED = "drain_skipped"
    EXIT_NOW = "exit_now"
    ONCE_DONE = "once_done"
    IDLE_DISCONNECT = "idle_disconnect"
    SHUTDOWN_STARTED = "shutdown_started"
    SHUTDOWN_TIMEOUT = "shutdown_timeout"
    SHUTDOWN_COMPLETE = "shutdown_complete"
    DEREGISTERED = "deregistered"
    DEREGISTER_SKIPPED = "deregister_skipped"
    DEREGISTER_FAILED = "deregister_failed"

    # calls to the server
    REGISTRATION_FAILED = "registration_failed"
    HEARTBEAT_FAILED = "heartbeat_failed"
    CLAIM_FAILED = "claim_failed"
    ACK_FAILED = "ack_failed"
    ACK_REJECTED = "ack_rejected"
    RESULT_REFUSED = "result_refused"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_HALF_OPEN = "breaker_half_open"
    BREAKER_CLOSED = "breaker_closed"
    SERVER_HEALTHY = "server_healthy"
    SERVER_UNHEALTHY = "server_unhealthy"

    # jobs and results
    JOB_STARTED = "job_started"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    JOB_RELEASED = "job_released"
    JOB_LEASE_LOST = "job_lease_lost"
    JOB_CANCEL_REQUESTED = "job_cancel_requested"
    LEASE_LOST = "lease_lost"
    JOBS_RELEASED = "jobs_released"
    OUTBOX_FULL = "outbox_full"
    OUTBOX_RECOVERED = "outbox_recovered"
    EXEC_LEFTOVERS_KILLED = "exec_leftovers_killed"

    # the process
    EVENT_LOOP_BLOCKED = "event_loop_blocked"
    SD_NOTIFY_BAD_ENV = "sd_notify_bad_env"
    SD_NOTIFY_FAILED = "sd_notify_failed"
    DEMO = "demo"

    # the server
    SERVER_LISTENING = "server_listening"
    SERVER_OPEN = "server_open"
    SERVER_STOPPING = "server_stopping"
    SERVER_STOPPED = "server_stopped"
    STORE_OPENED = "store_opened"
    STORE_OPEN_FAILED = "store_open_failed"
    STORE_REFUSED = "store_refused"
    STORE_UNAVAILABLE = "store_unavailable"
    SCHEMA_MIGRATED = "schema_migrated"
    TIMER_STORE_UNAVAILABLE = "timer_store_unavailable"
    TIMER_STORE_RECOVERED = "timer_store_recovered"
    PRUNE_STORE_UNAVAILABLE = "prune_store_unavailable"
    LISTEN_LOST = "listen_lost"
    LISTEN_UNAVAILABLE = "listen_unavailable"
    LISTEN_RESTORED = "listen_restored"
    BOT_REGISTERED = "bot_registered"
    TOKENS_FILE_INVALID = "tokens_file_invalid"
    TOKENS_FILE_READABLE = "tokens_file_readable"
    TOKENS_RELOADED = "tokens_reloaded"
    TOKENS_RELOAD_FAILED = "tokens_reload_failed"
    BOT_DEREGISTERED = "bot_deregistered"
    BOTS_GONE = "bots_gone"
    LEASES_EXPIRED = "leases_expired"
    LEASES_NOT_RECEIVED = "leases_not_received"
    CLAIM_ABANDONED = "claim_abandoned"
    JOB_CANCELLED = "job_cancelled"
    JOBS_RETRIED = "jobs_retried"
    JOBS_PRUNED = "jobs_pruned"
