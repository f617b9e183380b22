"""Immutable revisions and one writer per status, on the real control plane: what is served is exactly what passed
its gate. The operator runs in this process (kopf), kwok completes the stage Pods with the results the test writes."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from operator_kit import GOOD, Cluster, wait_for

from gptops import metrics
from gptops.devcluster.stages import RESULT_ANNOTATION

pytestmark = pytest.mark.cluster

MODEL = "burst"
GPTMODEL = {
    "apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": MODEL},
    "spec": {"source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
             "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
             "serving": {"replicas": 1, "resources": {"gpus": 1}}},
}


def finetunejob(name: str, **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"model": {"name": MODEL}, "startFrom": "source",
                 "dataset": {"source": {"pvc": {"claimName": "gptops-artifacts", "path": "data.jsonl"}}},
                 "training": {"method": "full", "resources": {"gpus": 0}, **training},
                 "evaluation": {"thresholds": {"maxPerplexity": 100}, "promote": True}},
    }


def result(stage: str, **extra: Any) -> str:
    return json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": True,
                       "message": f"{stage} done", **extra})


def finish_all(k: Cluster, stage: str, count: int, doc: str) -> float:
    """Wait for `count` Pods of `stage`, then finish them all with one kubectl call; returns when it was sent."""
    selector = f"gptops.io/model={MODEL},gptops.io/stage={stage}"
    wait_for(lambda: len([p for p in k.items("pods", selector) if p["spec"].get("nodeName")]) >= count,
             f"{count} scheduled {stage} Pods", timeout=180)
    sent = time.time()
    k.kubectl("annotate", "pods", "-l", selector, "--overwrite", f"{RESULT_ANNOTATION}={doc}")
    return sent


def promoted_events(k: Cluster) -> list[str]:
    return [e["message"] for e in k.events(MODEL) if e["reason"] == "Promoted"]


def test_thirty_gates_passing_in_one_second_while_a_pin_comes_and_goes(k: Cluster, operator) -> None:
    names = [f"burst-{i:02d}" for i in range(30)]
    errors_before = metrics.RECONCILE_ERRORS_TOTAL.labels(kind="GPTModel")._value.get()
    k.apply(GPTMODEL, *(finetunejob(n) for n in names))
    finish_all(k, "prepare", 30, result("prepare", digest="sha256:data"))
    finish_all(k, "train", 30, result("train", digest="sha256:weights"))
    k.kubectl("patch", "gptmodel", MODEL, "--type=merge", "-p", '{"spec":{"serving":{"revision":"burst-07"}}}')
    sent = finish_all(k, "evaluate", 30, result("evaluate", metrics=GOOD))

    # The pin wins as soon as its run passed; then it is removed and the promotion order resumes.
    wait_for(lambda: (k.get("gptmodel", MODEL) or {}).get("status", {}).get("servingRevision") == "burst-07",
             "the pinned revision to be served", timeout=120)
    k.kubectl("patch", "gptmodel", MODEL, "--type=json", "-p", '[{"op":"remove","path":"/spec/serving/revision"}]')
    for name in names:
        k.wait_condition("ftj", name, "Passed", "True", timeout=120)
    ftjs = {n: k.get("ftj", n) for n in names}
    passed_at = {n: next(c["lastTransitionTime"] for c in f["status"]["conditions"] if c["type"] == "Passed")
                 for n, f in ftjs.items()}
    expected = max(names, key=lambda n: (passed_at[n], n))  # the rule: passed last, ties by name

    def settled() -> dict[str, Any] | None:
        model = k.get("gptmodel", MODEL) or {}
        status = model.get("status", {})
        return model if status.get("servingRevision") == expected else None

    model = wait_for(settled, f"GPTModel {MODEL} to serve {expected}", timeout=120)
    directory = ftjs[expected]["status"]["artifacts"]["directory"]
    status = model["status"]
    assert status["servingArtifact"] == f"{directory}/model" and status["servingDigest"] == "sha256:weights"
    # What it replaced passed no later than it: the pinned run, or one that passed before the last one did.
    previous = status["previousRevision"]
    assert previous in names and (passed_at[previous], previous) < (passed_at[expected], expected)
    dep = wait_for(lambda: (d := k.get("deployment", MODEL)) and
                   d["metadata"]["annotations"].get("gptops.io/artifact") == f"{directory}/model" and d,
                   "the Deployment to serve the revision's directory")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == f"{directory}/model"

    # Every FineTuneJob's Promoted condition tells the truth: one served, every other one superseded by it.
    def truthful() -> dict[str, tuple[str, str]] | None:
        promoted = {n: (c["status"], c["reason"]) for n in names
                    for c in [k.condition("ftj", n, "Promoted")]}
        want = {n: ("True", "Promoted") if n == expected else ("False", "Superseded") for n in names}
        return promoted if promoted == want else None

    wait_for(truthful, "every Promoted condition to follow the GPTModel", timeout=120)
    # Its message names the revision that superseded it (and stays: later promotions rewrite no superseded run).
    superseded = k.condition("ftj", "burst-07", "Promoted")
    by = superseded["message"].removeprefix("superseded by ").split(" ", 1)[0]
    assert by in names and (passed_at[by], by) > (passed_at["burst-07"], "burst-07"), superseded["message"]

    events = promoted_events(k)
    within = max(passed_at.values()) <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sent + 60))
    errors = metrics.RECONCILE_ERRORS_TOTAL.labels(kind="GPTModel")._value.get() - errors_before
    seconds = len(set(passed_at.values()))
    print(f"\nburst: 30 gates passed in {seconds} distinct seconds ({min(passed_at.values())} to "
          f"{max(passed_at.values())}); served {expected} (previous {previous}); promotions {len(events)}; "
          f"GPTModel pass errors {errors}; conflicts 0 (one writer); lost 0", file=sys.__stdout__, flush=True)
    assert within, (sent, passed_at)
    assert errors == 0
    assert any("burst-07" in e for e in events) and any(expected in e for e in events)


def test_a_training_edit_is_a_new_revision_and_the_served_one_is_untouched(k: Cluster, operator) -> None:
    k.apply(GPTMODEL, finetunejob("edit"))
    for stage, doc in (("prepare", result("prepare")), ("train", result("train", digest="sha256:v1")),
                       ("evaluate", result("evaluate", metrics=GOOD))):
        finish_all(k, stage, 1, doc)
    k.wait_condition("ftj", "edit", "Promoted", "True", timeout=90)
    first = k.get("ftj", "edit")["status"]["artifacts"]
    served = lambda: (k.get("gptmodel", MODEL) or {}).get("status", {})  # noqa: E731
    assert served()["servingArtifact"] == f"{first['directory']}/model" and served()["servingDigest"] == "sha256:v1"
    old_jobs = {j["metadata"]["name"] for j in k.items("jobs", "gptops.io/finetunejob=edit")}

    # The gate alone: no Job, the same weights, the gate decided again.
    k.kubectl("patch", "ftj", "edit", "--type=merge", "-p",
              '{"spec":{"evaluation":{"thresholds":{"maxPerplexity":10}}}}')
    wait_for(lambda: k.condition("ftj", "edit", "Passed").get("status") == "False", "the stricter gate to reject")
    assert {j["metadata"]["name"] for j in k.items("jobs", "gptops.io/finetunejob=edit")} == old_jobs
    assert served()["servingArtifact"] == f"{first['directory']}/model"  # rejected later: still what passed then
    k.kubectl("patch", "ftj", "edit", "--type=merge", "-p",
              '{"spec":{"evaluation":{"thresholds":{"maxPerplexity":100}}}}')
    k.wait_condition("ftj", "edit", "Passed", "True")

    # A training change: a new revision in its own directory; the served one keeps serving, its Jobs stay.
    k.kubectl("patch", "ftj", "edit", "--type=merge", "-p", '{"spec":{"training":{"learningRate":0.001}}}')
    new_prepare = wait_for(lambda: next((j for j in k.items("jobs", "gptops.io/finetunejob=edit,gptops.io/stage=prepare")
                                         if j["metadata"]["name"] not in old_jobs), None), "the new revision's Job")
    container = new_prepare["spec"]["template"]["spec"]["containers"][0]["args"]
    new_dir = container[container.index("--artifacts") + 1]
    assert new_dir != first["directory"] and container[container.index("--retain") + 1] == first["revision"]
    assert old_jobs <= {j["metadata"]["name"] for j in k.items("jobs", "gptops.io/finetunejob=edit")}
    assert served()["servingArtifact"] == f"{first['directory']}/model"
    for stage, doc in (("prepare", result("prepare")), ("train", result("train", digest="sha256:v2")),
                       ("evaluate", result("evaluate", metrics=GOOD))):
        selector = f"gptops.io/finetunejob=edit,gptops.io/stage={stage}"
        wait_for(lambda: any(j["metadata"]["name"] not in old_jobs for j in k.items("jobs", selector)),
                 f"the new {stage} Job")
        job = next(j["metadata"]["name"] for j in k.items("jobs", selector) if j["metadata"]["name"] not in old_jobs)
        pod = wait_for(lambda: next(iter(k.items("pods", f"job-name={job}")), None), f"a Pod of {job}")
        k.kubectl("annotate", "pod", pod["metadata"]["name"], f"{RESULT_ANNOTATION}={doc}")
    wait_for(lambda: served().get("servingArtifact") == f"{new_dir}/model", "the new revision to be served", 90)
    assert served()["servingDigest"] == "sha256:v2"
    assert served()["previousArtifact"] == f"{first['directory']}/model"  # the rollback target, files kept
    k.wait_condition("ftj", "edit", "Promoted", "True")


def test_a_complete_stage_without_a_readable_result_fails_the_run(k: Cluster, operator) -> None:
    k.apply(GPTMODEL, finetunejob("mute"))
    finish_all(k, "prepare", 1, "Killed")  # exit 0, but no stage result in the termination message
    failed = k.wait_condition("ftj", "mute", "Failed", "True", timeout=90)
    assert failed["reason"] == "ResultMissing" and "termination message of Pod" in failed["message"]
    assert not k.items("jobs", "gptops.io/finetunejob=mute,gptops.io/stage=train")
