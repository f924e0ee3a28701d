"""contrib/k8s: schema-valid for Kubernetes, and consistent with how botd drains and probes.

Schemas come from ``kubernetes-validate`` (it bundles the Kubernetes JSON schemas, so nothing
is fetched at run time). Strict mode rejects unknown fields, which catches typos that a
cluster would silently ignore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parent.parent / "contrib" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest release still commonly run that we promise to fit
SHUTDOWN_BOUND_S = 5  # botd's whole shutdown ends within BOT_SHUTDOWN_TIMEOUT + this

Doc = dict[str, Any]


def load_all() -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = load_all()


def find(kind: str, name: str) -> Doc:
    (doc,) = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


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


@pytest.mark.parametrize(
    "doc", [d for _, d in DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]
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


@pytest.mark.parametrize("name", ["botd", "botd-server"])
def test_non_root_and_locked_down(name: str) -> None:
    pod = find("Deployment", name)["spec"]["template"]["spec"]
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


def test_bots_find_the_server_through_its_service() -> None:
    (bot,) = find("Deployment", "botd")["spec"]["template"]["spec"]["containers"]
    url = urlsplit(env_of(bot)["MAIN_SERVER_URL"])
    service = find("Service", "botd-server")
    server = find("Deployment", "botd-server")
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
