"""A killed operator or a lost Pod never leaves a half-done state behind, on the real local control plane.

The operator runs as `gptops operator` processes that the tests kill with SIGKILL (no cleanup handlers run, as when
a node dies or the OOM killer strikes). While it is down kwok still finishes stage Pods and the Job, Deployment and
garbage-collector controllers keep working; a new operator must pick up from what exists: the next stage under its
deterministic name, no duplicate Jobs, no stage run twice, conditions rebuilt for the current generation. A stage
Pod deleted under a running Job (its node died) is replaced by the Job controller, and the run goes on."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gptops.devcluster.stages import EXIT_CODE_ANNOTATION, RESULT_ANNOTATION
from operator_kit import EXAMPLES, GOOD, MODEL, RUN, Cluster
from waiting import wait_for

pytestmark = pytest.mark.cluster

STAGE_JOB_SELECTOR = f"app.kubernetes.io/managed-by=gptops,gptops.io/finetunejob={RUN}"


# --- what a test looks at -----------------------------------------------------------------------------------


def stage_jobs(k: Cluster) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["name"]: j for j in k.items("jobs", STAGE_JOB_SELECTOR)}


def job_pods(k: Cluster, stage: str) -> list[dict[str, Any]]:
    return k.items("pods", f"job-name={k.stage_job_name(RUN, stage)}")


def job_condition(job: dict[str, Any] | None, type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in ((job or {}).get("status") or {})
               .get("conditions", []))


def running_pod(k: Cluster, stage: str) -> dict[str, Any]:
    """The one Running Pod of a stage Job."""
    return wait_for(lambda: next((p for p in job_pods(k, stage) if p["status"].get("phase") == "Running"
                                  and not p["metadata"].get("deletionTimestamp")), None),
                    f"a Running Pod of the {stage} Job")


def complete_running_pod(k: Cluster, stage: str, message: str) -> None:
    """Like Cluster.complete_stage, but on the Pod that runs now: a Job that lost a Pod keeps the failed one."""
    pod = running_pod(k, stage)
    result = json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": True, "message": message,
                         "metrics": {}, "artifacts": {}, "digest": "sha256:0123"})
    k.kubectl("annotate", "pod", pod["metadata"]["name"], f"{RESULT_ANNOTATION}={result}")


def assert_conditions_current(k: Cluster, kind: str, name: str) -> dict[str, Any]:
    """Every condition, and status.observedGeneration where the kind has it, speak of the current generation."""
    obj = k.get(kind, name) or {}
    generation = obj["metadata"]["generation"]
    conditions = obj["status"]["conditions"]
    assert conditions and all(c["observedGeneration"] == generation for c in conditions), (generation, conditions)
    assert len({c["type"] for c in conditions}) == len(conditions), conditions
    if "observedGeneration" in obj["status"]:
        assert obj["status"]["observedGeneration"] == generation
    return obj


def our_events(k: Cluster, name: str) -> list[tuple[str, str]]:
    """(reason, message) of each event the operator posted about `name`, repeated by its count."""
    return [(e["reason"], e["message"]) for e in k.events(name) if e["reason"] != "Logging"
            for _ in range(e.get("count") or 1)]


# --- the tests ----------------------------------------------------------------------------------------------


def test_a_killed_operator_goes_on_where_it_stopped(k: Cluster, operators) -> None:
    first = operators()
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    prepare = wait_for(lambda: k.stage_job(RUN, "prepare"), "the prepare Job")
    running_pod(k, "prepare")
    k.wait_condition("ftj", RUN, "Prepared", "False")
    first.kill()

    # While nobody reconciles: the stage finishes (kwok, the Job controller), and the GPTModel's spec changes.
    k.complete_stage(RUN, "prepare")
    wait_for(lambda: job_condition(k.stage_job(RUN, "prepare"), "Complete"), "the prepare Job to complete")
    k.kubectl("patch", "gptmodel", MODEL, "--type=merge", "-p", '{"spec":{"serving":{"rolloutDeadlineSeconds":900}}}')
    assert (k.get("gptmodel", MODEL) or {})["metadata"]["generation"] == 2
    assert k.stage_job(RUN, "train") is None  # nothing moves on without an operator
    assert k.condition("ftj", RUN, "Prepared")["status"] == "False"  # the status the killed operator left

    second = operators()
    train = wait_for(lambda: k.stage_job(RUN, "train"), "the train Job from the new operator")
    k.wait_condition("ftj", RUN, "Prepared", "True")
    assert train["metadata"]["ownerReferences"][0]["name"] == RUN
    running_pod(k, "train")
    k.complete_stage(RUN, "train")
    wait_for(lambda: k.stage_job(RUN, "evaluate"), "the evaluate Job")
    running_pod(k, "evaluate")
    second.kill()

    # Killed again, with the last stage about to finish: the gate, the promotion and the rollout all fall to
    # the third operator.
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    wait_for(lambda: job_condition(k.stage_job(RUN, "evaluate"), "Complete"), "the evaluate Job to complete")
    assert k.condition("ftj", RUN, "Passed").get("status") != "True"

    operators()
    k.wait_condition("ftj", RUN, "Promoted", "True")
    wait_for(lambda: "--enable-lora" in k.deployment_args(MODEL), "the LoRA revision in the Deployment")
    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", timeout=90)
    k.wait_condition("gptmodel", MODEL, "Ready", "True")

    # One Job per stage under its deterministic name; none made twice, no stage run twice.
    jobs = stage_jobs(k)
    names = {s: k.stage_job_name(RUN, s) for s in ("prepare", "train", "evaluate")}
    assert sorted(jobs) == sorted(names.values())
    assert jobs[names["prepare"]]["metadata"]["uid"] == prepare["metadata"]["uid"]
    assert jobs[names["train"]]["metadata"]["uid"] == train["metadata"]["uid"]
    for stage in ("prepare", "train", "evaluate"):
        assert jobs[names[stage]]["status"].get("succeeded") == 1, stage
        assert len(job_pods(k, stage)) == 1, stage
    created = [m.split(" of revision")[0] for reason, m in our_events(k, RUN) if reason == "JobCreated"]
    assert sorted(created) == sorted(f"Created Job {names[s]} for the {s} stage"
                                     for s in ("prepare", "train", "evaluate")), created

    # Status rebuilt whole, for the current generations.
    ftj = assert_conditions_current(k, "ftj", RUN)
    state = {c["type"]: c["status"] for c in ftj["status"]["conditions"]}
    assert state == {"Prepared": "True", "Trained": "True", "Evaluated": "True", "Passed": "True",
                     "Promoted": "True", "Failed": "False"}, state
    assert ftj["status"]["phase"] == "Promoted"
    assert ftj["status"]["metrics"]["perplexity"] == 42.0
    assert all(ftj["status"]["stages"][s]["result"]["ok"] for s in ("prepare", "train", "evaluate"))
    model = wait_for(lambda: (m := assert_conditions_current(k, "gptmodel", MODEL))["metadata"]["generation"] == 2
                     and m, "the GPTModel's conditions at generation 2")
    assert model["status"]["servingRevision"] == RUN
    assert (k.get("deployment", MODEL) or {})["spec"]["progressDeadlineSeconds"] == 900
    gptmodel_state = {c["type"]: c["status"] for c in model["status"]["conditions"]}
    # ArtifactsShared: the one replica alone mounts the artifacts claim.
    assert gptmodel_state == {"Ready": "True", "Progressing": "False", "Degraded": "False",
                              "ArtifactsShared": "True"}, gptmodel_state
    # Each transition was posted once, however many operators saw it.
    ours = our_events(k, RUN)
    assert len(ours) == len(set(ours)), sorted(ours)


@pytest.mark.parametrize("how", ["deleted", "crashed"])
def test_a_lost_stage_pod_is_replaced_and_the_run_goes_on(k: Cluster, operators, how: str) -> None:
    op = operators()
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    k.complete_stage(RUN, "prepare")
    k.wait_condition("ftj", RUN, "Prepared", "True")
    lost = running_pod(k, "train")

    if how == "deleted":
        # Its node died: the Pod is gone (kwok removes a deleted Pod at once).
        k.kubectl("delete", "pod", lost["metadata"]["name"], "--timeout=30s")
    else:
        # It crashed with no stage result, only a log tail (exit 137, as after the OOM killer); the Job has
        # retries left (backoffLimit 2).
        k.kubectl("annotate", "pod", lost["metadata"]["name"], f"{RESULT_ANNOTATION}=Killed: CUDA out of memory",
                  f"{EXIT_CODE_ANNOTATION}=137")
        wait_for(lambda: (k.get("pod", lost["metadata"]["name"]) or {}).get("status", {}).get("phase") == "Failed",
                 "the crashed Pod to fail")
    # The Job controller makes another.
    replacement = running_pod(k, "train")
    assert replacement["metadata"]["uid"] != lost["metadata"]["uid"]
    job = k.stage_job(RUN, "train") or {}
    assert not job_condition(job, "Failed"), job["status"]

    # Passes after the loss, from the Job's events and the resync loop, keep the run Training, not Failed; a crash
    # is said (with the Pod's own words) while the Job retries, a lost Pod is not a failed attempt.
    op.wait_passes("FineTuneJob", 3)
    assert k.condition("ftj", RUN, "Failed")["status"] == "False"
    trained = k.condition("ftj", RUN, "Trained")
    if how == "deleted":
        assert (trained["status"], trained["reason"]) == ("False", "JobRunning"), trained
    else:
        assert (trained["status"], trained["reason"]) == ("False", "AttemptFailed"), trained
        assert "exit code 137" in trained["message"] and "Killed: CUDA out of memory" in trained["message"]
    assert (k.get("ftj", RUN) or {})["status"]["phase"] == "Training"

    complete_running_pod(k, "train", "resumed from checkpoint-100")
    trained = k.wait_condition("ftj", RUN, "Trained", "True")
    assert trained["message"] == "resumed from checkpoint-100"
    wait_for(lambda: k.stage_job(RUN, "evaluate"), "the evaluate Job")
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", RUN, "Promoted", "True")

    ftj = assert_conditions_current(k, "ftj", RUN)
    assert ftj["status"]["stages"]["train"]["result"]["message"] == "resumed from checkpoint-100"
    assert k.condition("ftj", RUN, "Failed")["status"] == "False"
    assert sorted(stage_jobs(k)) == sorted(k.stage_job_name(RUN, s) for s in ("prepare", "train", "evaluate"))
    assert not [reason for reason, _ in our_events(k, RUN) if reason in ("JobFailed", "StageFailed")]

    # The served revision loses its Pod too, after its rollout: the Deployment controller replaces it, and the
    # operator neither rolls back (that rollout completed: a Pod lost since is no failed rollout) nor leaves the
    # model not Ready.
    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", timeout=90)
    deployment = k.get("deployment", MODEL) or {}
    selector = ",".join(f"{key}={value}" for key, value in deployment["spec"]["selector"]["matchLabels"].items())
    serving = wait_for(lambda: next((p for p in k.items("pods", selector) if p["status"].get("phase") == "Running"
                                     and not p["metadata"].get("deletionTimestamp")), None), "the vLLM Pod")
    k.kubectl("delete", "pod", serving["metadata"]["name"], "--timeout=30s")
    wait_for(lambda: [p for p in k.items("pods", selector) if p["status"].get("phase") == "Running"
                      and p["metadata"]["uid"] != serving["metadata"]["uid"]], "a new vLLM Pod")
    op.wait_passes("GPTModel", 2)
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    model = assert_conditions_current(k, "gptmodel", MODEL)
    assert model["status"]["servingRevision"] == RUN
    assert k.condition("gptmodel", MODEL, "Degraded")["status"] == "False"
    annotations = (k.get("deployment", MODEL) or {})["metadata"]["annotations"]
    assert annotations["gptops.io/revision"] == RUN and "gptops.io/rolled-back-from" not in annotations


def test_a_finished_run_whose_pods_are_lost_keeps_its_outcome(k: Cluster, operators) -> None:
    """The stage results live in the Pods' termination messages; a complete Job's Pods can go (a lost node, the
    Pod garbage collector) and the Job controller makes no new ones. The status keeps what was read from them."""
    op = operators()
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", RUN, "Promoted", "True")
    op.wait_passes("FineTuneJob", 1)
    before = (k.get("ftj", RUN) or {})["status"]

    for stage in ("prepare", "train", "evaluate"):
        for pod in job_pods(k, stage):
            k.kubectl("delete", "pod", pod["metadata"]["name"], "--timeout=30s")
    wait_for(lambda: not k.items("pods", f"gptops.io/finetunejob={RUN}"), "the stage Pods to go")
    op.wait_passes("FineTuneJob", 3)

    after = (k.get("ftj", RUN) or {})["status"]
    assert after == before
    assert after["phase"] == "Promoted" and after["metrics"]["perplexity"] == 42.0
    assert sorted(stage_jobs(k)) == sorted(k.stage_job_name(RUN, s) for s in ("prepare", "train", "evaluate"))


def test_deletes_while_the_operator_is_down_are_not_blocked(k: Cluster, operators) -> None:
    op = operators()
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    running_pod(k, "prepare")
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    k.wait_condition("ftj", RUN, "Prepared", "False")
    replicasets = k.items("replicasets", "app.kubernetes.io/managed-by=gptops")
    prepare_job = k.stage_job_name(RUN, "prepare")
    assert replicasets and k.items("pods", f"job-name={prepare_job}")
    op.kill()

    for kind, name in (("ftj", RUN), ("gptmodel", MODEL), ("job", prepare_job)):
        obj = k.get(kind, name) or {}
        assert not obj["metadata"].get("finalizers"), (kind, obj["metadata"])
    started = time.monotonic()
    k.kubectl("delete", "ftj", RUN, "--timeout=30s")
    k.kubectl("delete", "gptmodel", MODEL, "--timeout=30s")
    assert time.monotonic() - started < 30

    # The garbage collector takes the children, and theirs, with nobody reconciling.
    wait_for(lambda: k.stage_job(RUN, "prepare") is None, "the garbage collector to delete the Job")
    wait_for(lambda: not k.items("pods", f"job-name={prepare_job}"), "the stage Pod to go")
    wait_for(lambda: k.get("deployment", MODEL) is None and k.get("service", MODEL) is None,
             "the garbage collector to delete the Deployment and Service")
    wait_for(lambda: not k.items("replicasets", "app.kubernetes.io/managed-by=gptops"), "the ReplicaSets to go")
    wait_for(lambda: not k.items("pods", "app.kubernetes.io/managed-by=gptops"), "every Pod of ours to go")
