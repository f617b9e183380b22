"""The fleet features on the real control plane: several LoRA adapters on one vLLM Deployment, the ReadWriteOnce
claim condition, and KEDA's ScaledObject where KEDA's CRDs are installed. The operator runs in this process."""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from operator_kit import GOOD, Cluster, wait_for
from test_revisions_cluster import GPTMODEL, MODEL, finetunejob

from gptops import cluster

pytestmark = pytest.mark.cluster

BASE = "sshleifer/tiny-gpt2"
ROOT = Path(__file__).resolve().parents[2]
KEDA_CRD = "scaledobjects.keda.sh"


def lora_modules(args: list[str]) -> list[str]:
    start = args.index("--lora-modules") + 1
    return args[start:args.index("--max-lora-rank")]


def pass_run(k: Cluster, run: str) -> None:
    k.complete_stage(run, "prepare")
    k.complete_stage(run, "train")
    k.complete_stage(run, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", run, "Promoted", "True", timeout=90)


def test_two_promoted_adapters_end_on_one_deployment(k: Cluster, operator) -> None:
    model = copy.deepcopy(GPTMODEL)
    model["spec"]["serving"]["lora"] = {"maxAdapters": 2}
    k.apply(model, finetunejob("lora-a", method="lora"))
    pass_run(k, "lora-a")
    first = k.get("ftj", "lora-a")["status"]["artifacts"]["directory"]
    wait_for(lambda: lora_modules(k.deployment_args(MODEL)) == [f"{MODEL}={first}/adapter"],
             "the first adapter to be served", timeout=90)

    k.apply(finetunejob("lora-b", method="lora"))
    pass_run(k, "lora-b")
    second = k.get("ftj", "lora-b")["status"]["artifacts"]["directory"]
    wait_for(lambda: lora_modules(k.deployment_args(MODEL)) == [f"lora-a={first}/adapter",
                                                                 f"{MODEL}={second}/adapter"],
             "both adapters on the one Deployment", timeout=90)
    args = k.deployment_args(MODEL)
    assert args[0] == BASE and args[args.index("--max-loras") + 1] == "2"
    assert [d["metadata"]["name"] for d in k.items("deployments", f"gptops.io/model={MODEL}")] == [MODEL]
    adapters = wait_for(lambda: (k.get("gptmodel", MODEL) or {}).get("status", {}).get("adapters"),
                        "status.adapters")
    assert [(a["revision"], a["modelName"]) for a in adapters] == [("lora-a", "lora-a"), ("lora-b", MODEL)]


def test_a_read_write_once_claim_shared_by_two_replicas_is_reported(k: Cluster, operator) -> None:
    k.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "store"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    model = copy.deepcopy(GPTMODEL)
    model["spec"]["artifacts"] = {"pvc": {"claimName": "store"}}
    model["spec"]["serving"]["replicas"] = 2
    k.apply(model)
    shared = k.wait_condition("gptmodel", MODEL, "ArtifactsShared", "False", timeout=90)
    assert shared["reason"] == "ReadWriteOnceClaim"
    assert "store is ReadWriteOnce but up to 2 vLLM Pods" in shared["message"] and "ReadWriteMany" in shared["message"]
    # Events are posted after the pass that wrote the condition.
    wait_for(lambda: any(e["reason"] == "ReadWriteOnceClaim" and e["type"] == "Warning" for e in k.events(MODEL)),
             "the ReadWriteOnceClaim Warning event")

    k.kubectl("patch", "gptmodel", MODEL, "--type=merge", "-p", '{"spec":{"serving":{"replicas":1}}}')
    assert k.wait_condition("gptmodel", MODEL, "ArtifactsShared", "True", timeout=90)["reason"] == "OnePodAtATime"
    # The examples' ReadWriteMany claim.
    k.kubectl("patch", "gptmodel", MODEL, "--type=merge", "-p",
              '{"spec":{"artifacts":{"pvc":{"claimName":"gptops-artifacts"}},"serving":{"replicas":2}}}')
    wait_for(lambda: k.condition("gptmodel", MODEL, "ArtifactsShared").get("reason") == "ReadWriteMany",
             "ArtifactsShared=True for the ReadWriteMany claim", timeout=90)


@pytest.fixture
def keda_crds(control_plane, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """KEDA's ScaledObject CRD from KEDA's Go module source (tools/keda-crds.sh, cached), installed for one test and
    removed after it, so the other tests see a cluster without KEDA. Yields the CRD."""
    done = subprocess.run(["bash", str(ROOT / "tools" / "keda-crds.sh")], capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        pytest.fail(f"tools/keda-crds.sh failed: {done.stderr[-2000:]}", pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1]) / "keda.sh_scaledobjects.yaml"
    monkeypatch.setattr(cluster, "KEDA_CHECK_SECONDS", 0.0)  # the operator notices KEDA come and go at once
    control_plane.kubectl("apply", "--server-side", "-f", str(path))
    wait_for(lambda: control_plane.kubectl("get", "scaledobjects", "-A", check=False).returncode == 0,
             "KEDA's ScaledObject to be served", timeout=60)
    try:
        yield yaml.safe_load(path.read_text())
    finally:
        control_plane.kubectl("delete", "crd", KEDA_CRD, "--ignore-not-found", "--wait=true", "--timeout=60s",
                              check=False)


def test_with_keda_installed_autoscaling_is_a_scaled_object_that_scales_to_zero(k: Cluster, keda_crds,
                                                                               operator) -> None:
    model = copy.deepcopy(GPTMODEL)
    model["spec"]["serving"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 3, "targetWaitingRequests": 2}
    k.apply(model)
    so = wait_for(lambda: k.get("scaledobject", MODEL), "the operator's ScaledObject", timeout=90)
    # The API server accepted it under KEDA's own schema and pruned nothing of what the operator sent.
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 3
    assert so["spec"]["scaleTargetRef"]["name"] == MODEL
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "2" and "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 120}]
    assert so["metadata"]["ownerReferences"][0]["name"] == MODEL
    assert k.get("hpa", MODEL) is None
    assert k.condition("gptmodel", MODEL, "Degraded").get("status") == "False"
    dep = wait_for(lambda: k.get("deployment", MODEL), "the Deployment")
    assert dep["spec"]["replicas"] == 1  # no KEDA operator runs here: nothing scaled it

    # KEDA goes: minReplicas 0 is refused with the reason, and nothing is made in its place ...
    k.cp.kubectl("delete", "crd", KEDA_CRD, "--wait=true", "--timeout=60s")
    wait_for(lambda: k.kubectl("get", "scaledobjects", check=False).returncode != 0, "ScaledObject to go", 60)
    time.sleep(1)  # discovery answers from the aggregated cache, which the CRD's removal updates
    k.kubectl("patch", "gptmodel", MODEL, "--type=merge", "-p", '{"spec":{"serving":{"autoscaling":{"maxReplicas":4}}}}')
    degraded = k.wait_condition("gptmodel", MODEL, "Degraded", "True", timeout=90)
    assert degraded["reason"] == "ScaleToZeroNeedsKEDA" and "install KEDA or set minReplicas" in degraded["message"]
    assert k.get("hpa", MODEL) is None
    # ... until minReplicas is 1: then the HorizontalPodAutoscaler takes over.
    k.kubectl("patch", "gptmodel", MODEL, "--type=merge", "-p", '{"spec":{"serving":{"autoscaling":{"minReplicas":1}}}}')
    hpa = wait_for(lambda: k.get("hpa", MODEL), "the HorizontalPodAutoscaler", timeout=90)
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 4
    k.wait_condition("gptmodel", MODEL, "Degraded", "False", timeout=60)
