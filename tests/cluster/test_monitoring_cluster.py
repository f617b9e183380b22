"""Live evaluation on the real control plane: the operator starts the monitor Job of the rolled-out revision, kwok
completes its Pod with the monitor's result, and the result drives status.monitoring, the Drifted condition, the
events, the gptops_live_* metrics and, with action rollback, the rollback to the previous revision."""

from __future__ import annotations

import json

import pytest
from argocd_health import health
from prometheus_client import REGISTRY
from test_operator import run_examples_to_promotion

from gptops.devcluster.stages import RESULT_ANNOTATION
from operator_kit import GOOD, MODEL, RUN, Cluster, wait_for

pytestmark = pytest.mark.cluster

MONITORING = {"dataset": {"source": {"configMap": {"name": "held-out", "key": "data.jsonl"}}},
              "intervalSeconds": 600, "metrics": ["perplexity", "bleu"], "tolerance": 0.1, "action": "rollback",
              "inputDrift": {"psiThreshold": 0.2}}


def monitor_job(k: Cluster) -> dict:
    return wait_for(lambda: next(iter(k.items("jobs", f"gptops.io/stage=monitor,gptops.io/model={MODEL}")), None),
                    "the monitor Job")


def test_a_drifted_revision_is_flagged_and_rolled_back(k: Cluster, operator) -> None:
    run_examples_to_promotion(k)
    k.kubectl("patch", "gptmodel", MODEL, "--type", "merge", "-p", json.dumps({"spec": {"monitoring": MONITORING}}))

    job = monitor_job(k)
    name = job["metadata"]["name"]
    revision_key = (k.get("ftj", RUN) or {})["status"]["artifacts"]["revision"]
    assert name == f"{MODEL}-monitor-{revision_key}-0"  # the revision's first run, right after its rollout
    assert job["metadata"]["ownerReferences"][0]["kind"] == "GPTModel"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--endpoint") + 1] == f"http://{MODEL}.{k.ns}.svc:8000/v1"
    assert any(a.startswith("http://") and a.endswith(":8000/metrics") for a in args)  # the vLLM Pod, by its IP
    assert k.condition("gptmodel", MODEL, "Drifted").get("reason") == "NotYetRun"

    pod = wait_for(lambda: next(iter(k.items("pods", f"job-name={name}")), None), f"a Pod of Job {name}")
    result = {"apiVersion": "gptops.io/stage-result/v1", "stage": "monitor", "ok": True,
              "message": "live: bleu 3.4, perplexity 60", "metrics": {"perplexity": 60.0, "bleu": 3.4,
                                                                      "inputPsi": 0.05, "liveRequests": 120}}
    k.kubectl("annotate", "pod", pod["metadata"]["name"], f"{RESULT_ANNOTATION}={json.dumps(result)}")

    degraded = k.wait_condition("gptmodel", MODEL, "Degraded", "True", timeout=90)
    assert degraded["reason"] == "RolledBack"
    assert degraded["message"].startswith(f"revision {RUN} drifted in live evaluation (perplexity 60 is 42.9% worse")
    wait_for(lambda: (k.get("deployment", MODEL) or {})["metadata"]["annotations"]["gptops.io/revision"] == "source",
             "the Deployment back on the previous revision (the source)")
    model = k.get("gptmodel", MODEL) or {}
    assert model["status"].get("servingRevision") is None
    # Argo CD's health of the live drifted object (Argo CD's own engine too, where tools/argocd-health is built).
    assert health("gptmodel", model)[0] == "Degraded"
    assert "drifted in live evaluation" in health("gptmodel", model)[1]
    monitoring = model["status"]["monitoring"]
    assert monitoring["lastRun"]["job"] == name and monitoring["lastRun"]["result"] == "drifted"
    assert monitoring["lastRun"]["revision"] == RUN
    assert monitoring["live"] == {"perplexity": 60.0, "bleu": 3.4}
    assert monitoring["atPromotion"] == {"perplexity": GOOD["perplexity"], "bleu": GOOD["bleu"]}
    assert monitoring["inputPsi"] == 0.05
    warnings = {(e["type"], e["reason"]): e["message"] for e in k.events(MODEL)}
    assert "perplexity 60 is 42.9% worse than 42" in warnings[("Warning", "MetricsWorsened")]
    assert "drifted in live evaluation" in warnings[("Warning", "RolledBack")]

    labels = {"namespace": k.ns, "model": MODEL}
    assert REGISTRY.get_sample_value("gptops_live_runs_total", {**labels, "result": "drifted"}) == 1
    assert REGISTRY.get_sample_value("gptops_live_metric", {**labels, "revision": RUN, "metric": "perplexity"}) == 60
    assert REGISTRY.get_sample_value("gptops_live_baseline_metric",
                                     {**labels, "revision": RUN, "metric": "perplexity"}) == GOOD["perplexity"]
    assert REGISTRY.get_sample_value("gptops_live_input_psi", {**labels, "revision": RUN}) == 0.05
    assert REGISTRY.get_sample_value("gptops_rollbacks_total", labels) == 1
    # The source is served and monitored now: its own first run, and the drifted revision's Job is gone.
    source_job = wait_for(lambda: next((j for j in k.items("jobs", f"gptops.io/stage=monitor,gptops.io/model={MODEL}")
                                        if "-monitor-source-" in j["metadata"]["name"]), None),
                          "the monitor Job of the source")
    assert source_job["metadata"]["labels"]["gptops.io/revision-key"] == "source"
    wait_for(lambda: k.get("job", name) is None, "the drifted revision's monitor Job deleted")
