"""Human review on the real control plane: a passed FineTuneJob with evaluation.approval: manual waits for a person
(Promoted=False AwaitingApproval, an event naming the command, samples in status), an approval of an older revision
does not promote a new one, `kubectl annotate ... gptops.io/approved=true` promotes, `=false` rejects. The operator
runs in this process (kopf); kwok completes the stage Pods with the results the test writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from operator_kit import GOOD, Cluster, wait_for

from gptops.devcluster.stages import RESULT_ANNOTATION

pytestmark = pytest.mark.cluster

MODEL = "reviewed"
GPTMODEL = {
    "apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": MODEL},
    "spec": {"source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
             "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
             "serving": {"replicas": 1, "resources": {"gpus": 1}}},
}
SAMPLES = [{"prompt": f"What is {i}?", "reference": f"{i} is a number.", "output": f"{i} is a number too.",
            "baseOutput": "the the the"} for i in range(3)]


def finetunejob(name: str, learning_rate: float = 5e-5) -> dict[str, Any]:
    return {
        "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"model": {"name": MODEL}, "startFrom": "source",
                 "dataset": {"source": {"pvc": {"claimName": "gptops-artifacts", "path": "data.jsonl"}}},
                 "training": {"method": "full", "resources": {"gpus": 0}, "learningRate": learning_rate},
                 "evaluation": {"thresholds": {"maxPerplexity": 100}, "promote": True, "approval": "manual"}},
    }


def run_to_gate(k: Cluster, name: str, digest: str, earlier: frozenset[str] = frozenset()) -> str:
    """Finish the three stages of the current revision (Jobs not among `earlier`); returns its revision key."""
    for stage, extra in (("prepare", {"digest": "sha256:data"}), ("train", {"digest": digest}),
                         ("evaluate", {"metrics": GOOD, "samples": SAMPLES})):
        job = wait_for(lambda st=stage: (j := k.stage_job(name, st)) and j["metadata"]["name"] not in earlier
                       and j["metadata"]["name"], f"the {stage} Job of {name}'s current revision", timeout=120)
        pod = wait_for(lambda j=job: next(iter(k.items("pods", f"job-name={j}")), None), f"a Pod of Job {job}",
                       timeout=120)
        doc = json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": True,
                          "message": f"{stage} done", **extra})
        k.kubectl("annotate", "pod", pod["metadata"]["name"], "--overwrite", f"{RESULT_ANNOTATION}={doc}")
    wait_for(lambda: k.condition("ftj", name, "Promoted").get("reason") == "AwaitingApproval",
             f"{name} to await approval", timeout=120)
    return (k.get("ftj", name) or {})["status"]["artifacts"]["revision"]


def serving(k: Cluster) -> dict[str, Any]:
    return ((k.get("gptmodel", MODEL) or {}).get("status") or {})


def test_a_passed_run_waits_for_a_person_and_an_approval_is_bound_to_its_revision(k: Cluster, operator) -> None:
    k.apply(GPTMODEL, finetunejob("review"))
    first = run_to_gate(k, "review", "sha256:first")
    ftj = k.get("ftj", "review") or {}
    assert ftj["status"]["phase"] == "AwaitingApproval"
    assert [s["prompt"] for s in ftj["status"]["samples"]] == [s["prompt"] for s in SAMPLES]
    assert ftj["status"]["samples"][0]["baseOutput"] == "the the the"
    waiting = [e for e in k.events("review") if e["reason"] == "AwaitingApproval"]
    assert len(waiting) == 1 and waiting[0]["type"] == "Normal"
    assert f"gptops.io/approved=true gptops.io/approved-revision={first}" in waiting[0]["message"]
    assert serving(k).get("servingRevision") is None

    # An approval naming another revision promotes nothing; the plain one of the issue does.
    k.kubectl("annotate", "ftj", "review", "gptops.io/approved=true", "gptops.io/approved-revision=0000000000")
    wait_for(lambda: "names revision 0000000000" in k.condition("ftj", "review", "Promoted").get("message", ""),
             "the mismatched approval to be named", timeout=60)
    assert serving(k).get("servingRevision") is None
    k.kubectl("annotate", "ftj", "review", "gptops.io/approved-revision-")
    k.wait_condition("ftj", "review", "Promoted", "True", timeout=120)
    assert serving(k)["servingDigest"] == "sha256:first"
    assert any(e["reason"] == "Approved" for e in k.events("review"))

    # A new spec is a new revision: the standing gptops.io/approved=true was about the first one.
    earlier = frozenset(j["metadata"]["name"] for j in k.items("jobs", "gptops.io/finetunejob=review"))
    k.apply(finetunejob("review", learning_rate=1e-4))
    second = run_to_gate(k, "review", "sha256:second", earlier)
    assert second != first
    status = (k.get("ftj", "review") or {})["status"]
    assert status["approval"] == {"revision": second, "decision": "Pending", "unbound": "true"}
    assert serving(k)["servingDigest"] == "sha256:first"

    # Rejected, with the revision named: never served.
    k.kubectl("annotate", "ftj", "review", "--overwrite", "gptops.io/approved=false",
              f"gptops.io/approved-revision={second}")
    wait_for(lambda: k.condition("ftj", "review", "Promoted").get("reason") == "Rejected", "the rejection",
             timeout=60)
    assert (k.get("ftj", "review") or {})["status"]["phase"] == "Rejected"
    assert serving(k)["servingDigest"] == "sha256:first"
