"""Every row of docs/operator.md's "What each state shows", driven on the real control plane: the conditions, the
phase, the columns of `kubectl get ftj` / `kubectl get gm` (the real kubectl's table), the events, the metrics (the
operator runs in this process) and the Argo CD health the chart's Lua gives the live object read back from the API.

kwok plays kubelet: it finishes stage Pods with the results the tests write, fails them with a given exit code and
reason (OOMKilled), and leaves Pods of MISSING_IMAGE waiting in ErrImagePull. A rollout that never becomes Available
is made by asking for more GPUs than a node has, or by cordoning every node while a new revision rolls out."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from argocd_health import health
from gptops.devcluster.stages import (
    EXIT_CODE_ANNOTATION,
    MISSING_IMAGE,
    REASON_ANNOTATION,
    RESULT_ANNOTATION,
)
from operator_kit import GOOD, Cluster, wait_for
from prometheus_client import REGISTRY

pytestmark = pytest.mark.cluster

MODEL = "states"
DEADLINE = 30  # spec.serving.rolloutDeadlineSeconds: the least the CRD accepts


def gptmodel(name: str = MODEL, *, gpus: int = 1, source: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": name},
        "spec": {"source": source or {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
                 "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
                 "serving": {"replicas": 1, "resources": {"gpus": gpus}, "rolloutDeadlineSeconds": DEADLINE}},
    }


def run(name: str, model: str = MODEL, *, promote: bool = True, max_perplexity: float = 100,
        **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"model": {"name": model}, "startFrom": "source",
                 "dataset": {"source": {"pvc": {"claimName": "gptops-artifacts", "path": "data.jsonl"}}},
                 "training": {"method": "full", "resources": {"gpus": 0}, **training},
                 "evaluation": {"thresholds": {"maxPerplexity": max_perplexity}, "promote": promote}},
    }


def finish(k: Cluster, name: str, metrics: dict[str, float] | None = None) -> None:
    """Let every stage of `name` succeed, the evaluate stage with `metrics`."""
    k.complete_stage(name, "prepare", digest="sha256:data")
    k.complete_stage(name, "train", digest=f"sha256:{name}")
    k.complete_stage(name, "evaluate", metrics=metrics or GOOD)


def fail_attempt(k: Cluster, name: str, stage: str, reason: str, exit_code: int, said: str) -> None:
    """kwok ends the running Pod of the stage as a kubelet would: Failed, with the container's reason and code."""
    job = k.stage_job_name(name, stage)
    pod = wait_for(lambda: next(iter(k.items("pods", f"job-name={job}")), None), f"a Pod of Job {job}")
    k.kubectl("annotate", "pod", pod["metadata"]["name"], f"{RESULT_ANNOTATION}={said}",
              f"{EXIT_CODE_ANNOTATION}={exit_code}", f"{REASON_ANNOTATION}={reason}")


def table(k: Cluster, kind: str) -> dict[str, dict[str, str]]:
    """`kubectl get <kind>` as a person reads it: {NAME: {COLUMN: cell}}, cut at the header's column starts."""
    lines = k.kubectl("get", kind).stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    names = lines[0].split()
    rows = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def reached(k: Cluster, kind: str, name: str, type_: str, status: str, reason: str,
            timeout: float = 60) -> dict[str, Any]:
    """Wait until the object's condition has this status and reason for its current generation; the live object."""
    def check() -> dict[str, Any] | None:
        obj = k.get(kind, name) or {}
        c = condition(obj, type_)
        current = obj and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and (c.get("status"), c.get("reason")) == (status, reason) else None
    return wait_for(check, f"{kind}/{name} {type_}={status} {reason}", timeout)


def has_event(k: Cluster, name: str, type_: str, reason: str, says: str = "") -> dict[str, Any]:
    return wait_for(lambda: next((e for e in k.events(name) if (e["type"], e["reason"]) == (type_, reason)
                                  and says in e["message"]), None),
                    f"a {type_} event {reason} about {name}" + (f" saying {says!r}" if says else ""))


def assert_ftj(k: Cluster, name: str, type_: str, status: str, reason: str, *, phase: str, says: str,
               argocd: str, event: tuple[str, str], timeout: float = 60) -> dict[str, Any]:
    """One FineTuneJob row: the deciding condition, the phase, the event and the Argo CD health on the live object."""
    obj = reached(k, "ftj", name, type_, status, reason, timeout)
    said = condition(obj, type_)["message"]
    assert says in said, said
    assert obj["status"]["phase"] == phase, obj["status"]
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in obj["status"]["conditions"])
    got = health("finetunejob", obj)
    assert got[0] == argocd, got
    has_event(k, name, *event)
    return obj


def assert_gm(k: Cluster, name: str, type_: str, status: str, reason: str, *, says: str, argocd: str,
              columns: dict[str, str], event: tuple[str, str] | None = None, timeout: float = 60) -> dict[str, Any]:
    """One GPTModel row: the deciding condition, the columns of `kubectl get gm`, the event, the condition gauges and
    the Argo CD health on the live object."""
    obj = reached(k, "gm", name, type_, status, reason, timeout)
    said = condition(obj, type_)["message"]
    assert says in said, said
    got = health("gptmodel", obj)
    assert got[0] == argocd and (argocd == "Healthy" or said in got[1]), got
    seen: list[dict[str, str]] = []
    try:
        row = wait_for(lambda: (r := table(k, "gm")[name]) and not seen.append(r)
                       and all(r[c] == v for c, v in columns.items()) and r, f"kubectl get gm to show {columns}", 10)
    except pytest.fail.Exception:
        pytest.fail(f"kubectl get gm shows {seen[-1]}, not {columns}", pytrace=False)
    assert row["ENDPOINT"] == ("" if columns.get("SERVING") == ""
                               else f"http://{name}.{k.ns}.svc:8000/v1"), row
    def gauges_follow() -> bool:  # the live object's conditions, which may have moved on since `obj` was read
        live = k.get("gm", name) or {}
        return all(sample("gptops_gptmodel_condition", namespace=k.ns, model=name, condition=c)
                   == (1.0 if condition(live, c).get("status") == "True" else 0.0)
                   for c in ("Ready", "Progressing", "Degraded"))
    wait_for(gauges_follow, f"gptops_gptmodel_condition of {name} to follow its conditions", timeout=10)
    if type_ == "Degraded":  # a Degraded row lasts until the test changes something: its gauge says it
        assert sample("gptops_gptmodel_condition", namespace=k.ns, model=name, condition=type_) == (
            1.0 if status == "True" else 0.0)
    if event:
        has_event(k, name, *event)
    return obj


def test_every_finetunejob_state_says_what_it_is(k: Cluster, operator) -> None:
    failures = sample("gptops_stage_failures_total", stage="prepare", reason="StageFailed")
    k.apply(gptmodel(), run("orphan", model="ghost"), run("running"), run("stuck", resources={"gpus": 16}),
            run("pull", image=MISSING_IMAGE), run("oom"), run("broken"),
            run("rejected", promote=False, max_perplexity=10), run("held", promote=False), run("first"))

    # GPTModel missing: nothing starts, and it is said.
    assert_ftj(k, "orphan", "Prepared", "False", "ModelNotFound", phase="Pending", argocd="Degraded",
               says="GPTModel ghost not found", event=("Warning", "ModelNotFound"))
    assert not k.items("jobs", "gptops.io/finetunejob=orphan")
    # A stage running.
    running = assert_ftj(k, "running", "Prepared", "False", "JobRunning", phase="Preparing", argocd="Progressing",
                         says="is running", event=("Normal", "JobCreated"))
    assert health("finetunejob", running)[1].startswith("Prepared: Job running-prepare-")

    # A stage Pod stuck or retried: the cause in the condition, once as a Warning, and in Argo CD's message.
    k.complete_stage("stuck", "prepare")
    fail_attempt(k, "oom", "prepare", "OOMKilled", 137, "killed at step 12")
    stuck = [
        assert_ftj(k, "stuck", "Trained", "False", "Unschedulable", phase="Training", argocd="Progressing",
                   says="Insufficient nvidia.com/gpu", event=("Warning", "Unschedulable")),
        assert_ftj(k, "pull", "Prepared", "False", "ErrImagePull", phase="Preparing", argocd="Progressing",
                   says=f'failed to pull and unpack image "{MISSING_IMAGE}"', event=("Warning", "ErrImagePull")),
        assert_ftj(k, "oom", "Prepared", "False", "AttemptFailed", phase="Preparing", argocd="Progressing",
                   says="attempt 1 failed (OOMKilled, exit code 137): killed at step 12; retrying",
                   event=("Warning", "AttemptFailed")),
    ]
    for obj, type_ in zip(stuck, ("Trained", "Prepared", "Prepared"), strict=True):
        assert condition(obj, type_)["message"] in health("finetunejob", obj)[1]
    # Once per cause: more passes over every FineTuneJob post nothing again.
    passes = sample("gptops_reconcile_total", kind="FineTuneJob", result="ok")
    wait_for(lambda: sample("gptops_reconcile_total", kind="FineTuneJob", result="ok") >= passes + 20,
             "20 more FineTuneJob passes")
    for name, reason in (("stuck", "Unschedulable"), ("pull", "ErrImagePull"), ("oom", "AttemptFailed"),
                         ("orphan", "ModelNotFound")):
        posted = [e for e in k.events(name) if e["reason"] == reason]
        assert sum(e.get("count") or 1 for e in posted) == 1, posted

    # A stage failed: ok: false is final, no retry, and the later stages say why they did not run.
    k.complete_stage("broken", "prepare", ok=False, message="no column 'text' in data.jsonl")
    broken = assert_ftj(k, "broken", "Failed", "True", "StageFailed", phase="Failed", argocd="Degraded",
                        says="no column 'text' in data.jsonl", event=("Warning", "StageFailed"))
    assert "no column 'text'" in health("finetunejob", broken)[1]
    for type_ in ("Trained", "Evaluated", "Passed", "Promoted"):
        assert (condition(broken, type_)["status"], condition(broken, type_)["reason"]) == ("False", "StageFailed")
    job = k.stage_job("broken", "prepare")
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"]["conditions"])
    assert len(k.items("pods", f"job-name={job['metadata']['name']}")) == 1  # not retried
    assert not k.items("jobs", "gptops.io/finetunejob=broken,gptops.io/stage=train")

    # Rejected by its gate; passed but not asked to be promoted; served.
    for name in ("rejected", "held", "first"):
        finish(k, name)
    rejected = assert_ftj(k, "rejected", "Passed", "False", "ThresholdsNotMet", phase="Rejected", argocd="Degraded",
                          says="perplexity 42.00, needs <= 10.00", event=("Warning", "ThresholdsNotMet"))
    assert health("finetunejob", rejected)[1].startswith("Rejected by its gate: ")
    assert_ftj(k, "held", "Promoted", "False", "PromotionNotRequested", phase="Passed", argocd="Healthy",
               says="spec.evaluation.promote is false", event=("Normal", "ThresholdsMet"))
    first = assert_ftj(k, "first", "Promoted", "True", "Promoted", phase="Promoted", argocd="Healthy",
                       says=f"served by GPTModel {MODEL}", event=("Normal", "Promoted"), timeout=90)
    assert condition(first, "Passed")["status"] == "True"

    assert {name: (row["PHASE"], row["PERPLEXITY"], row["PASSED"], row["PROMOTED"])
            for name, row in table(k, "ftj").items()} == {
        "orphan": ("Pending", "", "Unknown", "Unknown"),
        "running": ("Preparing", "", "Unknown", "Unknown"),
        "stuck": ("Training", "", "Unknown", "Unknown"),
        "pull": ("Preparing", "", "Unknown", "Unknown"),
        "oom": ("Preparing", "", "Unknown", "Unknown"),
        "broken": ("Failed", "", "False", "False"),
        "rejected": ("Rejected", "42", "False", "False"),
        "held": ("Passed", "42", "True", "False"),
        "first": ("Promoted", "42", "True", "True"),
    }
    phases = {"Pending": 1, "Preparing": 3, "Training": 1, "Failed": 1, "Rejected": 1, "Passed": 1, "Promoted": 1}
    wait_for(lambda: all(sample("gptops_finetunejobs", namespace=k.ns, phase=p) == n for p, n in phases.items()),
             f"gptops_finetunejobs to count {phases}", timeout=10)
    assert sample("gptops_evaluation_metric", namespace=k.ns, finetunejob="held", metric="perplexity") == 42.0
    assert sample("gptops_stage_failures_total", stage="prepare", reason="StageFailed") == failures + 1

    # No longer served: a run that passed later is served instead.
    k.apply(run("second"))
    finish(k, "second")
    superseded = assert_ftj(k, "first", "Promoted", "False", "Superseded", phase="Passed", argocd="Healthy",
                            says="superseded by second", event=("Normal", "Superseded"), timeout=90)
    assert health("finetunejob", superseded)[1].startswith(f"superseded by second in GPTModel {MODEL}")
    assert table(k, "ftj")["first"]["PROMOTED"] == "False"


def test_an_edit_of_the_gate_alone_decides_it_again_on_the_same_results(k: Cluster, operator) -> None:
    k.apply(gptmodel(), run("regate", promote=False, max_perplexity=10))
    finish(k, "regate")
    before = assert_ftj(k, "regate", "Passed", "False", "ThresholdsNotMet", phase="Rejected", argocd="Degraded",
                        says="perplexity 42.00, needs <= 10.00", event=("Warning", "ThresholdsNotMet"))
    jobs = {j["metadata"]["name"] for j in k.items("jobs", "gptops.io/finetunejob=regate")}
    stages = before["status"]["stages"]

    k.kubectl("patch", "ftj", "regate", "--type=merge", "-p",
              '{"spec":{"evaluation":{"thresholds":{"maxPerplexity":50}}}}')
    after = assert_ftj(k, "regate", "Passed", "True", "ThresholdsMet", phase="Passed", argocd="Healthy",
                       says="perplexity 42.00, needs <= 50.00", event=("Normal", "ThresholdsMet"))
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    # The same Jobs, the same results and weights: nothing ran again.
    assert {j["metadata"]["name"] for j in k.items("jobs", "gptops.io/finetunejob=regate")} == jobs
    assert after["status"]["stages"] == stages and after["status"]["artifacts"] == before["status"]["artifacts"]
    for type_ in ("Prepared", "Trained", "Evaluated"):
        assert condition(after, type_)["status"] == "True"
        assert condition(after, type_)["lastTransitionTime"] == condition(before, type_)["lastTransitionTime"]
    assert table(k, "ftj")["regate"]["PASSED"] == "True"
    assert sample("gptops_evaluation_metric", namespace=k.ns, finetunejob="regate", metric="perplexity") == 42.0


def patch_serving(k: Cluster, name: str, serving: dict[str, Any]) -> None:
    k.kubectl("patch", "gm", name, "--type=merge", "-p", json.dumps({"spec": {"serving": serving}}))


@pytest.fixture
def cordoned(k: Cluster) -> Iterator[Any]:
    """cordon() makes every node refuse new Pods (running ones stay); uncordon() undoes it, and so does the end."""
    def nodes(verb: str) -> None:
        k.cp.kubectl(verb, *[n["metadata"]["name"] for n in json.loads(
            k.cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]])

    class Nodes:
        def cordon(self) -> None:
            nodes("cordon")

        def uncordon(self) -> None:
            nodes("uncordon")

    try:
        yield Nodes()
    finally:
        nodes("uncordon")


def test_every_gptmodel_state_says_what_it_is(k: Cluster, operator, cordoned) -> None:
    endpoint = f"http://{MODEL}.{k.ns}.svc:8000/v1"
    k.apply(gptmodel("blank", source={"scratch": {}}), gptmodel(gpus=16))

    # Nothing to serve yet: healthy (a sync wave must not wait for a FineTuneJob), no Deployment.
    assert_gm(k, "blank", "Ready", "False", "NoRevision", says="nothing to serve yet", argocd="Healthy",
              columns={"SERVING": "", "READY": "0/1", "PROGRESSING": "NoRevision", "DEGRADED": "False"})
    assert k.get("deployment", "blank") is None

    # Rolling out (16 GPUs: no node has them), then failed with nothing to roll back to.
    assert_gm(k, MODEL, "Progressing", "True", "RolloutInProgress", says="rolling out revision source",
              argocd="Progressing", event=("Normal", "DeploymentCreated"),
              columns={"SERVING": "source", "READY": "0/1", "PROGRESSING": "RolloutInProgress", "DEGRADED": "False"})
    assert_gm(k, MODEL, "Degraded", "True", "RolloutDeadlineExceeded", says="no previous revision to roll back to",
              argocd="Degraded", event=("Warning", "RolloutDeadlineExceeded"), timeout=DEADLINE + 60,
              columns={"SERVING": "source", "READY": "0/1", "PROGRESSING": "RolloutDeadlineExceeded",
                       "DEGRADED": "True"})

    # The cause fixed: serving, and Degraded clears.
    patch_serving(k, MODEL, {"resources": {"gpus": 1}})
    serving = assert_gm(k, MODEL, "Progressing", "False", "RolloutComplete", says="revision source is rolled out",
                        argocd="Healthy",
                        columns={"SERVING": "source", "READY": "1/1", "PROGRESSING": "RolloutComplete",
                                 "DEGRADED": "False"})
    assert condition(serving, "Ready")["status"] == "True" and condition(serving, "Degraded")["status"] == "False"
    assert serving["status"]["endpoint"] == endpoint

    # A pin on a run that does not exist: Degraded, while the source keeps serving.
    patch_serving(k, MODEL, {"revision": "nope"})
    pinned = assert_gm(k, MODEL, "Degraded", "True", "NoRevision", says="there is no FineTuneJob nope",
                       argocd="Degraded", event=("Warning", "NoRevision"),
                       columns={"SERVING": "source", "READY": "1/1", "DEGRADED": "True"})
    assert condition(pinned, "Ready")["status"] == "True"

    # A pin on a run still running: Progressing, Waiting (and the missing pin's Degraded is gone).
    k.apply(run("slow"), run("bad", max_perplexity=10))
    patch_serving(k, MODEL, {"revision": "slow"})
    waiting = assert_gm(k, MODEL, "Progressing", "True", "Waiting", says="waiting for FineTuneJob slow to pass",
                        argocd="Progressing", columns={"SERVING": "source", "READY": "1/1", "PROGRESSING": "Waiting",
                                                       "DEGRADED": "False"})
    assert condition(waiting, "Degraded")["status"] == "False"
    assert_ftj(k, "slow", "Prepared", "False", "JobRunning", phase="Preparing", argocd="Progressing",
               says="is running", event=("Normal", "JobCreated"))

    # A pin on a run its gate rejected.
    finish(k, "bad")
    reached(k, "ftj", "bad", "Passed", "False", "ThresholdsNotMet")
    patch_serving(k, MODEL, {"revision": "bad"})
    assert_gm(k, MODEL, "Degraded", "True", "GateNotPassed", says="FineTuneJob bad did not pass its gate",
              argocd="Degraded", event=("Warning", "GateNotPassed"),
              columns={"SERVING": "source", "READY": "1/1", "DEGRADED": "True"})
    assert_ftj(k, "slow", "Prepared", "False", "JobRunning", phase="Preparing", argocd="Progressing",
               says="is running", event=("Normal", "JobCreated"))

    # Rolled back: the pin removed, "slow" passes and is promoted while no node takes a new Pod.
    promotions = sample("gptops_promotions_total", namespace=k.ns, model=MODEL)
    patch_serving(k, MODEL, {"revision": None})
    reached(k, "gm", MODEL, "Degraded", "False", "AsExpected")
    k.complete_stage("slow", "prepare", digest="sha256:data")
    k.complete_stage("slow", "train", digest="sha256:slow")
    job = k.stage_job_name("slow", "evaluate")
    wait_for(lambda: any(p["status"].get("phase") == "Running" for p in k.items("pods", f"job-name={job}")),
             f"a Running Pod of {job}")
    cordoned.cordon()
    k.complete_stage("slow", "evaluate", metrics=GOOD)
    slow = reached(k, "ftj", "slow", "Passed", "True", "ThresholdsMet")
    served = f"slow ({slow['status']['artifacts']['revision']})"
    assert_gm(k, MODEL, "Progressing", "True", "RolloutInProgress", says="rolling out revision slow",
              argocd="Progressing", event=("Normal", "Promoted"),
              columns={"SERVING": served, "READY": "1/1", "PROGRESSING": "RolloutInProgress", "DEGRADED": "False"})
    back = assert_gm(k, MODEL, "Degraded", "True", "RolledBack", says="revision slow did not become Available",
                     argocd="Degraded", event=("Warning", "RolledBack"), timeout=DEADLINE + 60,
                     columns={"SERVING": "source", "READY": "1/1", "DEGRADED": "True"})
    assert "rolled back to revision source" in condition(back, "Degraded")["message"]
    assert sample("gptops_rollbacks_total", namespace=k.ns, model=MODEL) == 1.0
    assert sample("gptops_promotions_total", namespace=k.ns, model=MODEL) == promotions + 1
    assert_ftj(k, "slow", "Promoted", "False", "Superseded", phase="Passed", argocd="Healthy",
               says="superseded by", event=("Normal", "Superseded"))

    # A changed pin is retried: pinning the rolled-back run tries it again, and now it rolls out.
    cordoned.uncordon()
    patch_serving(k, MODEL, {"revision": "slow"})
    assert_gm(k, MODEL, "Progressing", "False", "RolloutComplete", says="revision slow is rolled out",
              argocd="Healthy", timeout=90,
              columns={"SERVING": served, "READY": "1/1", "PROGRESSING": "RolloutComplete", "DEGRADED": "False"})
    assert sample("gptops_promotions_total", namespace=k.ns, model=MODEL) == promotions + 2
    assert_ftj(k, "slow", "Promoted", "True", "Promoted", phase="Promoted", argocd="Healthy",
               says=f"served by GPTModel {MODEL}", event=("Normal", "Promoted"))

    # A change of spec.serving that never becomes Available: Degraded while the old Pods serve; fixed, it clears.
    patch_serving(k, MODEL, {"resources": {"gpus": 64}})
    broken = assert_gm(k, MODEL, "Degraded", "True", "RolloutDeadlineExceeded",
                       says="the change to spec.serving (generation", argocd="Degraded",
                       event=("Warning", "RolloutDeadlineExceeded"), timeout=DEADLINE + 60,
                       columns={"SERVING": served, "READY": "1/1", "PROGRESSING": "RolloutDeadlineExceeded",
                                "DEGRADED": "True"})
    assert condition(broken, "Ready")["status"] == "True"
    assert sample("gptops_rollbacks_total", namespace=k.ns, model=MODEL) == 1.0  # never rolled back to another
    patch_serving(k, MODEL, {"resources": {"gpus": 1}})
    assert_gm(k, MODEL, "Progressing", "False", "RolloutComplete", says="revision slow is rolled out",
              argocd="Healthy", timeout=90,
              columns={"SERVING": served, "READY": "1/1", "PROGRESSING": "RolloutComplete", "DEGRADED": "False"})
