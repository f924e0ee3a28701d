"""contrib/k8s/keda: the ScaledObject is schema-valid for KEDA and scales the bots on the
server's queue depth.

``kubernetes-validate`` knows no custom resource, so the schema is the one KEDA's own CRD
declares: ``tests/contrib/schemas/keda.sh_scaledobjects.yaml``, vendored from the KEDA project
(its header says from where), so nothing is fetched at run time. Like the other manifests it
is checked strictly: an object schema with properties admits no other field, which catches
the typos that a cluster would prune without a word. The Prometheus query is checked by
promtool (Debian's ``prometheus`` package, which the noxfile installs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.paths import REPO

K8S = REPO / "contrib" / "k8s"
KEDA = K8S / "keda"
CRD = Path(__file__).parent / "schemas" / "keda.sh_scaledobjects.yaml"
#: The trigger metadata KEDA's prometheus scaler reads (pkg/scalers/prometheus_scaler.go of
#: the vendored release); any other key is ignored by KEDA, so a typo would go unnoticed.
PROMETHEUS_KEYS = {
    "serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
    "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout",
    "identityOwner",
}  # fmt: skip

Doc = dict[str, Any]


def docs_in(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


(SCALED,) = [d for p in sorted(KEDA.glob("*.yaml")) for d in docs_in(p)]
(BOTS,) = [d for d in docs_in(K8S / "bots.yaml") if d["kind"] == "Deployment"]


def strict(schema: Any) -> Any:
    """``schema`` where every object schema with properties admits no other field (unless
    it says ``x-kubernetes-preserve-unknown-fields``), as the API server prunes them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validator() -> jsonschema.Draft7Validator:
    (crd,) = docs_in(CRD)
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == ("keda.sh", "ScaledObject")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    assert version["served"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def problems(doc: Doc) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)
    ]


def test_scaled_object_is_valid_for_kedas_crd() -> None:
    assert (SCALED["apiVersion"], SCALED["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert problems(SCALED) == []


def test_the_strict_check_catches_a_typo() -> None:
    typo = {**SCALED, "spec": {**SCALED["spec"], "maxReplicas": 10}}
    assert any("maxReplicas" in p for p in problems(typo))
    unknown = {**SCALED, "spec": {k: v for k, v in SCALED["spec"].items() if k != "triggers"}}
    assert any("triggers" in p for p in problems(unknown))


def test_it_scales_the_bots_deployment() -> None:
    target = SCALED["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (BOTS["apiVersion"], BOTS["kind"])
    assert target["name"] == BOTS["metadata"]["name"]
    spec = SCALED["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"] <= 50
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    # Each pod that goes drains first: scale down one pod at a time, and not on a dip.
    assert down["stabilizationWindowSeconds"] >= 60
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])


def test_the_trigger_is_the_queue_depth_of_the_kind_the_bots_claim() -> None:
    (trigger,) = SCALED["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert set(meta) <= PROMETHEUS_KEYS
    assert re.fullmatch(r"https?://[\w.-]+(:\d+)?", meta["serverAddress"])
    assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) >= 0
    query = meta["query"]
    match = re.search(r"max\(botd_server_queue_depth\{([^}]*)\}\)", query)
    assert match, query
    labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
    assert labels["job"] == "botd-server"  # the server's job name (contrib/prometheus)
    # The bots claim BOT_KINDS, else what their handler takes: the simulate handler's kind.
    (container,) = BOTS["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("BOT_HANDLER", "simulate") == "simulate"
    assert labels["kind"] == (env.get("BOT_KINDS") or "simulate")
    assert "botd_server_oldest_queued_job_age_seconds" in (KEDA / "scaledobject.yaml").read_text()


def test_promtool_parses_the_query(tmp_path: Path) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install --no-install-recommends prometheus); `nox -s tests` does this"
        )
    (trigger,) = SCALED["spec"]["triggers"]
    rule = {"record": "botd:keda_query", "expr": trigger["metadata"]["query"]}
    rules = {"groups": [{"name": "keda", "rules": [rule]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    proc = subprocess.run(
        [exe, "check", "rules", "rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
