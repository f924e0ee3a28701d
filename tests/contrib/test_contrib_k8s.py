"""contrib/k8s: schema-valid for Kubernetes, and consistent with how botd drains and probes.

Schemas come from ``kubernetes-validate`` (it bundles the Kubernetes JSON schemas, so nothing
is fetched at run time). Strict mode rejects unknown fields, which catches typos that a
cluster would silently ignore.

Two servers ship: ``reference-server.yaml`` (SQLite, one replica, applied with the bots) and
``postgres/`` (replicas on PostgreSQL, a replacement with the same names). Each variant is
checked on its own, with the bots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import trio
import yaml
from starlette.requests import Request

from botd.models import MAX_WAIT_S
from botd.server.config import DB_ENV
from botd.server.dashboard import dashboard
from botd.server.run import GRACEFUL_TIMEOUT_S
from tests.support.paths import REPO

K8S = REPO / "contrib" / "k8s"
PG = K8S / "postgres"
SECRET_EXAMPLE = PG / "secret.yaml.example"
KUBERNETES_VERSION = "1.30"  # the oldest release still commonly run that we promise to fit
SHUTDOWN_BOUND_S = 5  # botd's whole shutdown ends within BOT_SHUTDOWN_TIMEOUT + this

Doc = dict[str, Any]


def load(paths: list[Path]) -> list[tuple[str, Doc]]:
    docs = []
    for path in paths:
        name = path.relative_to(K8S).as_posix()
        docs += [(name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


# What `kubectl apply -f contrib/k8s/` applies (it does not descend into postgres/) ...
DOCS = load(sorted(K8S.glob("*.yaml")))
# ... and what `kubectl apply -f contrib/k8s/postgres/` applies (.yaml, .yml and .json only).
PG_DOCS = load(sorted(p for p in PG.iterdir() if p.suffix in (".yaml", ".yml", ".json")))
EXAMPLES = load([SECRET_EXAMPLE])
ALL = DOCS + PG_DOCS + EXAMPLES


def find(kind: str, name: str, docs: list[tuple[str, Doc]] = DOCS) -> Doc:
    (doc,) = [d for _, d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pg_find(kind: str, name: str) -> Doc:
    return find(kind, name, PG_DOCS)


def pg_server() -> tuple[Doc, Doc]:
    """The PostgreSQL server's pod spec and its one container."""
    pod = pg_find("Deployment", "botd-server")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def env_of(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_manifests_found() -> None:
    kinds = sorted(d["kind"] for _, d in DOCS)
    assert kinds == [
        "Deployment",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]


def test_postgres_manifests_found() -> None:
    assert sorted((d["kind"], d["metadata"]["name"]) for _, d in PG_DOCS) == [
        ("Deployment", "botd-server"),
        ("PodDisruptionBudget", "botd-server"),
        ("Service", "botd-server"),
    ]
    # The example Secret is never applied with the directory: it cannot overwrite the real one.
    assert [(d["kind"], d["metadata"]["name"]) for _, d in EXAMPLES] == [
        ("Secret", "botd-server-db")
    ]


@pytest.mark.parametrize(
    "doc", [d for _, d in ALL], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in ALL]
)
def test_schema_valid(doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_bots_drain_within_grace_period() -> None:
    pod = find("Deployment", "botd")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    drain = int(env["BOT_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain + SHUTDOWN_BOUND_S
    assert container["command"] == ["botd"]
    assert container["args"] == ["run"]


def test_bots_probes_on_the_ops_port() -> None:
    deployment = find("Deployment", "botd")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    env = env_of(container)
    assert env["BOT_OPS_ADDR"] == "0.0.0.0:9317"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["ops"] == 9317
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    notes = template["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == "9317"
    assert notes["prometheus.io/path"] == "/metrics"


def test_bots_token_is_a_file_from_a_secret() -> None:
    pod = find("Deployment", "botd")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert "BOT_TOKEN" not in env
    token_file = Path(env["BOT_TOKEN_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, m in mounts.items() if token_file.parent == Path(m["mountPath"])]
    assert mounts[name]["readOnly"] is True
    secret = volumes[name]["secret"]
    assert secret["secretName"] == "botd-token"
    assert {"key": "token", "path": token_file.name} in secret["items"]
    # Files in a secret volume belong to root and to the fsGroup: the bot reads via the group.
    assert secret["defaultMode"] & 0o040
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    # The state dir is a writable volume (the root filesystem is read-only).
    state = Path(env["BOT_STATE_DIR"])
    assert any(state.is_relative_to(m["mountPath"]) for m in container["volumeMounts"])


@pytest.mark.parametrize(
    ("docs", "name"),
    [(DOCS, "botd"), (DOCS, "botd-server"), (PG_DOCS, "botd-server")],
    ids=["bots", "sqlite-server", "postgres-server"],
)
def test_non_root_and_locked_down(docs: list[tuple[str, Doc]], name: str) -> None:
    pod = find("Deployment", name, docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_pdb_covers_the_bots() -> None:
    pdb = find("PodDisruptionBudget", "botd")
    labels = find("Deployment", "botd")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("docs", [DOCS, PG_DOCS], ids=["sqlite", "postgres"])
def test_bots_find_the_server_through_its_service(docs: list[tuple[str, Doc]]) -> None:
    (bot,) = find("Deployment", "botd")["spec"]["template"]["spec"]["containers"]
    url = urlsplit(env_of(bot)["MAIN_SERVER_URL"])
    service = find("Service", "botd-server", docs)
    server = find("Deployment", "botd-server", docs)
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert url.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    assert (
        service["spec"]["selector"].items()
        <= server["spec"]["template"]["metadata"]["labels"].items()
    )
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["targetPort"] in named
    args = container["args"]
    assert args[0] == "server"
    assert args[args.index("--port") + 1] == str(named[port["targetPort"]])


def test_one_server_on_one_database() -> None:
    server = find("Deployment", "botd-server")
    assert server["spec"]["replicas"] == 1
    assert server["spec"]["strategy"]["type"] == "Recreate"
    pod = server["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    db = Path(container["args"][container["args"].index("--db") + 1])
    (mount,) = [m for m in container["volumeMounts"] if db.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert find("PersistentVolumeClaim", claim)


# -- the replicas on PostgreSQL ---------------------------------------------------------------


def test_postgres_server_has_replicas_and_rolls_without_a_gap() -> None:
    server = pg_find("Deployment", "botd-server")
    assert server["spec"]["replicas"] > 1
    strategy = server["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_postgres_dsn_comes_from_a_secret_and_nowhere_else() -> None:
    pod, container = pg_server()
    (db,) = [e for e in container["env"] if e["name"] == DB_ENV]
    assert "value" not in db
    ref = db["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "botd-server-db", "key": "dsn"}  # not optional: no DSN, no server
    # Never inline: not on the command line, not in any plain env value, no volume needed.
    assert "--db" not in container["args"] and "--db" not in container["command"]
    words = [*container["command"], *container["args"]]
    words += [e["value"] for e in container["env"] if "value" in e]
    assert not any(w.startswith(("postgres://", "postgresql://")) for w in words)
    assert "volumes" not in pod
    # The example Secret has that key, and a placeholder that cannot pass for a password.
    secret = find("Secret", ref["name"], EXAMPLES)
    dsn = urlsplit(secret["stringData"][ref["key"]])
    assert dsn.scheme == "postgresql"
    assert dsn.password is not None and "REPLACE-ME" in dsn.password
    assert "EXAMPLE ONLY" in SECRET_EXAMPLE.read_text()


def test_postgres_readiness_on_health_liveness_off_the_database() -> None:
    _, container = pg_server()
    ready = container["readinessProbe"]["httpGet"]
    assert ready == {"path": "/v1/health", "port": "http"}
    # /v1/health is 503 while PostgreSQL is down: liveness on it would restart every replica.
    live = container["livenessProbe"]
    assert live.get("httpGet", {}).get("path") not in ("/v1/health", "/metrics")
    assert live["httpGet"] == {"path": "/", "port": "http"}
    # Liveness gives up later than readiness: a slow replica leaves the Service first.
    assert (
        live["periodSeconds"] * live["failureThreshold"]
        > container["readinessProbe"]["periodSeconds"]
        * container["readinessProbe"]["failureThreshold"]
    )


def test_liveness_page_needs_no_database() -> None:
    """GET / (the dashboard) is answered from the package alone: no store, no token."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    response = trio.run(dashboard, request)
    assert response.status_code == 200


def test_postgres_grace_covers_a_long_poll_and_the_shutdown() -> None:
    pod, container = pg_server()
    grace = pod["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert grace >= 35
    assert grace >= pre_stop + MAX_WAIT_S + GRACEFUL_TIMEOUT_S


def test_postgres_pdb_and_resources() -> None:
    pdb = pg_find("PodDisruptionBudget", "botd-server")
    server = pg_find("Deployment", "botd-server")
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["maxUnavailable"] < server["spec"]["replicas"]
    _, container = pg_server()
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()


def test_postgres_server_replaces_the_sqlite_one() -> None:
    """Same names and selector, so the bots' URL holds and switching is an apply."""
    sqlite = find("Deployment", "botd-server")
    postgres = pg_find("Deployment", "botd-server")
    assert sqlite["spec"]["selector"] == postgres["spec"]["selector"]
    assert find("Service", "botd-server")["spec"] == pg_find("Service", "botd-server")["spec"]
