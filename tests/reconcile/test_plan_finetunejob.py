"""Table tests of plan_finetunejob: every transition of prepare -> train -> evaluate -> gate -> promotion, failures,
and that planning again after applying a plan changes nothing."""

from __future__ import annotations

import pytest

from gptops.api import FineTuneJob, GPTModel, new_revision
from gptops.api.constants import STAGES
from gptops.builders import stage_job_name
from gptops.reconcile import CreateChild, DeleteChild, EmitEvent, PodState
from reconcile_world import FINETUNEJOB, GPTMODEL, World, conditions, settle, stage_result

REVISION = new_revision(FineTuneJob.from_dict(FINETUNEJOB), GPTModel.from_dict(GPTMODEL))
PREPARE, TRAIN, EVALUATE = (stage_job_name(FineTuneJob.from_dict(FINETUNEJOB), s, REVISION) for s in STAGES)
GOOD = {"perplexity": 20.0, "baselinePerplexity": 40.0}
BAD = {"perplexity": 80.0, "baselinePerplexity": 90.0}


def run_to_evaluation(world: World, metrics: dict[str, float], weights: str = "sha256:w1") -> str:
    """Drive the three stages to success, settling after each step; returns the revision's directory."""
    settle(world, "ftj")
    root = world.ftj["status"]["artifacts"]["directory"]
    world.finish_job(world.job("prepare"), stage_result("prepare", digest="sha256:abc",
                                                        artifacts={"dataset": f"{root}/dataset"}))
    settle(world, "ftj")
    adapter = world.ftj["spec"].get("training", {}).get("method") == "lora"
    world.finish_job(world.job("train"), stage_result(
        "train", digest=weights, artifacts={"adapter" if adapter else "model": f"{root}/{'adapter' if adapter else 'model'}",
                                            "checkpoint": f"{root}/checkpoints/c-10"}))
    settle(world, "ftj")
    world.finish_job(world.job("evaluate"), stage_result("evaluate", metrics=metrics,
                                                         artifacts={"report": f"{root}/eval/report.json"}))
    return root


def promote(world: World) -> None:
    """The FineTuneJob pass records the gate; the GPTModel's own pass decides what it serves; the FineTuneJob reads
    the outcome."""
    settle(world, "ftj")
    world.apply_model(world.plan_model())
    settle(world, "ftj")


def created(plan) -> list[str]:
    return [a.name for a in plan.actions if isinstance(a, CreateChild)]


def test_a_new_finetunejob_gets_its_prepare_job(world: World) -> None:
    plan = world.plan_ftj()
    assert created(plan) == [PREPARE]
    job = plan.actions[0].manifest
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-ftj"
    cond = conditions(plan.status)
    assert cond["Prepared"]["status"] == "False" and cond["Prepared"]["reason"] == "JobCreated"
    assert cond["Trained"]["reason"] == "Waiting"
    assert cond["Failed"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in plan.status["conditions"])
    assert plan.status["observedGeneration"] == 3
    assert any(isinstance(a, EmitEvent) and a.reason == "JobCreated" for a in plan.actions)


def test_a_running_stage_waits_without_actions(world: World) -> None:
    world.apply_ftj(world.plan_ftj())
    plan = world.plan_ftj()
    assert plan.actions == ()
    assert conditions(plan.status)["Prepared"]["reason"] == "JobRunning"
    assert plan.status["phase"] == "Preparing"
    assert plan.status["stages"]["prepare"]["jobName"] == PREPARE


@pytest.mark.parametrize(
    ("finished", "next_job", "done_condition", "phase"),
    [
        ([PREPARE], TRAIN, "Prepared", "Training"),
        ([PREPARE, TRAIN], EVALUATE, "Trained", "Evaluating"),
    ],
)
def test_a_finished_stage_starts_the_next(world: World, finished, next_job, done_condition, phase) -> None:
    settle(world, "ftj")
    for name in finished:
        stage = name.split("-")[2]
        world.finish_job(name, stage_result(stage, digest="sha256:abc"))
        if name != finished[-1]:
            settle(world, "ftj")
    plan = world.plan_ftj()
    assert created(plan) == [next_job]
    cond = conditions(plan.status)
    assert cond[done_condition]["status"] == "True" and cond[done_condition]["reason"] == "JobSucceeded"
    assert plan.status["phase"] == phase
    assert plan.status["lineage"]["datasetDigest"] == "sha256:abc"
    assert any(e.reason == "JobSucceeded" for e in plan.events)


def test_a_passing_evaluation_is_served_by_the_gptmodels_own_pass(world: World) -> None:
    root = run_to_evaluation(world, GOOD)
    assert root == REVISION.directory == f"/artifacts/ml/tiny-ft/{REVISION.key}"
    plan = world.plan_ftj()
    cond = conditions(plan.status)
    assert cond["Evaluated"]["status"] == "True"
    assert cond["Passed"]["status"] == "True" and cond["Passed"]["reason"] == "ThresholdsMet"
    assert "perplexity 20.00" in cond["Passed"]["message"] and "50.00" in cond["Passed"]["message"]
    assert "50.0%" in cond["Passed"]["message"]  # relative to the base: (40 - 20) / 40
    assert plan.status["metrics"] == GOOD
    # The FineTuneJob never writes the GPTModel: it waits for the GPTModel's pass.
    assert cond["Promoted"]["status"] == "False" and cond["Promoted"]["reason"] == "Waiting"
    assert plan.status["phase"] == "Passed"
    world.apply_ftj(plan)
    assert "servingRevision" not in (world.model.get("status") or {})

    model_plan = world.plan_model()
    status = model_plan.status
    assert status["servingRevision"] == "tiny-ft"
    assert status["servingArtifact"] == f"{root}/model" and status["servingDigest"] == "sha256:w1"
    assert status["servingPassedAt"] == cond["Passed"]["lastTransitionTime"]
    assert status["previousRevision"] is None  # it served its source before
    assert status["previousArtifact"] == "sshleifer/tiny-gpt2"
    assert any(e.reason == "Promoted" and "tiny-ft" in e.message for e in model_plan.events)
    world.apply_model(model_plan)
    annotations = world.deployment_manifest["metadata"]["annotations"]
    assert annotations["gptops.io/artifact"] == f"{root}/model" and annotations["gptops.io/digest"] == "sha256:w1"

    plan = world.plan_ftj()
    assert conditions(plan.status)["Promoted"]["status"] == "True"
    assert plan.status["phase"] == "Promoted"
    assert any(e.reason == "Promoted" for e in plan.events)
    world.apply_ftj(plan)
    assert settle(world, "ftj").actions == ()
    lineage = world.ftj["status"]["lineage"]
    assert lineage["servedBy"] == "tiny" and lineage["weightsDigest"] == "sha256:w1" and lineage["directory"] == root


def test_promotion_keeps_the_previous_revision(world: World) -> None:
    world.model["status"] = {"servingRevision": "older", "servingArtifact": "/artifacts/ml/older/abc/model"}
    world.ftj["spec"]["startFrom"] = "source"
    run_to_evaluation(world, GOOD)
    promote(world)
    status = world.model["status"]
    assert status["servingRevision"] == "tiny-ft"
    assert status["previousRevision"] == "older"
    assert status["previousArtifact"] == "/artifacts/ml/older/abc/model"


@pytest.mark.parametrize(("rank", "max_lora_rank"), [(8, "8"), (96, "128"), (300, "320"), (512, "512")])
def test_a_promoted_lora_run_records_its_rank_for_the_deployment(world: World, rank, max_lora_rank) -> None:
    world.ftj["spec"]["training"] = {"method": "lora", "lora": {"r": rank}}
    world.ftj["spec"]["startFrom"] = "source"
    world.model["status"] = {"servingRevision": "older", "servingArtifact": "sshleifer/tiny-gpt2",
                             "servingAdapter": "/artifacts/ml/older/abc/adapter", "servingLoraRank": 16}
    root = run_to_evaluation(world, GOOD)
    promote(world)
    status = world.model["status"]
    assert status["servingLoraRank"] == rank
    assert status["servingAdapter"] == f"{root}/adapter"
    assert status["previousLoraRank"] == 16
    args = world.deployment_manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-lora-rank") + 1] == max_lora_rank


@pytest.mark.parametrize(("status", "start"), [
    ({"servingRevision": "older", "servingArtifact": "/artifacts/ml/older/model"}, "/artifacts/ml/older/model"),
    ({"servingRevision": "older", "servingArtifact": "sshleifer/tiny-gpt2",
      "servingAdapter": "/artifacts/ml/older/adapter", "servingLoraRank": 16}, "/artifacts/ml/older/adapter"),
])
def test_a_run_starts_from_what_is_served_a_lora_revision_from_its_adapter(world: World, status, start) -> None:
    world.model["status"] = status
    world.ftj["spec"]["startFrom"] = "serving"
    [job] = [a.manifest for a in world.plan_ftj().actions if isinstance(a, CreateChild)]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--start-model") + 1] == start


def test_promoting_a_full_run_over_a_lora_run_clears_the_rank(world: World) -> None:
    world.model["status"] = {"servingRevision": "older", "servingArtifact": "sshleifer/tiny-gpt2",
                             "servingAdapter": "/artifacts/ml/older/abc/adapter", "servingLoraRank": 16}
    world.ftj["spec"]["startFrom"] = "source"
    run_to_evaluation(world, GOOD)
    promote(world)
    status = world.model["status"]
    assert "servingAdapter" not in status and "servingLoraRank" not in status
    assert status["previousAdapter"] == "/artifacts/ml/older/abc/adapter"


def test_a_failing_gate_rejects_with_the_numbers_and_leaves_serving_alone(world: World) -> None:
    world.model["status"] = {"servingRevision": "older", "servingArtifact": "/artifacts/ml/older/model"}
    run_to_evaluation(world, BAD)
    plan = world.plan_ftj()
    assert plan.changes == ()
    cond = conditions(plan.status)
    assert cond["Passed"]["status"] == "False" and cond["Passed"]["reason"] == "ThresholdsNotMet"
    assert "perplexity 80.00, needs <= 50.00" in cond["Passed"]["message"]
    assert "11.1%" in cond["Passed"]["message"]
    assert cond["Promoted"]["status"] == "False"
    assert plan.status["phase"] == "Rejected"
    assert [e.type for e in plan.events if e.reason == "ThresholdsNotMet"] == ["Warning"]
    world.apply_ftj(plan)
    world.apply_model(world.plan_model())
    assert world.model["status"]["servingRevision"] == "older"


def test_passing_without_promote_does_not_promote(world: World) -> None:
    world.ftj["spec"]["evaluation"]["promote"] = False
    run_to_evaluation(world, GOOD)
    plan = world.plan_ftj()
    assert plan.changes == ()
    cond = conditions(plan.status)
    assert cond["Passed"]["status"] == "True"
    assert cond["Promoted"]["status"] == "False" and cond["Promoted"]["reason"] == "PromotionNotRequested"
    assert plan.status["phase"] == "Passed"
    promote(world)
    assert "servingRevision" not in world.model["status"]


def test_no_thresholds_passes(world: World) -> None:
    world.ftj["spec"]["evaluation"]["thresholds"] = {}
    run_to_evaluation(world, GOOD)
    assert conditions(world.plan_ftj().status)["Passed"]["reason"] == "NoThresholds"


def test_a_superseded_revision_says_so(world: World) -> None:
    run_to_evaluation(world, GOOD)
    promote(world)
    world.model["status"].update(servingRevision="newer", servingArtifact="/artifacts/ml/newer/abc/model",
                                 servingPassedAt="2026-01-01T01:00:00Z")
    plan = world.plan_ftj()
    assert plan.changes == ()
    promoted = conditions(plan.status)["Promoted"]
    assert promoted["status"] == "False" and promoted["reason"] == "Superseded"
    assert "newer" in promoted["message"]


@pytest.mark.parametrize(
    ("message", "reason", "expected"),
    [
        (stage_result("prepare", ok=False, message="dataset.fields.text: no field 'text' in corpus.jsonl line 1"),
         "StageFailed", "no field 'text' in corpus.jsonl line 1"),
        ("Traceback (most recent call last):\nMemoryError", "JobFailed", "MemoryError"),
        ("", "JobFailed", "BackoffLimitExceeded"),
    ],
    ids=["stage-result", "plain-message", "no-message"],
)
def test_a_failed_stage_fails_the_run_with_the_pods_message(world: World, message, reason, expected) -> None:
    settle(world, "ftj")
    world.finish_job(PREPARE, message, ok=False)
    plan = world.plan_ftj()
    assert plan.changes == ()  # no train Job
    cond = conditions(plan.status)
    assert cond["Failed"]["status"] == "True" and cond["Failed"]["reason"] == reason
    assert expected in cond["Failed"]["message"] and PREPARE in cond["Failed"]["message"]
    assert cond["Prepared"]["status"] == "False"
    # Nothing waits on a failed run: the later stages say why they did not run, the gate and promotion too.
    assert cond["Trained"]["reason"] == reason and cond["Trained"]["message"] == "not run: the prepare stage failed"
    assert cond["Evaluated"]["message"] == "not run: the prepare stage failed"
    assert (cond["Passed"]["status"], cond["Promoted"]["status"]) == ("False", "False")
    assert plan.status["phase"] == "Failed"
    assert [e.type for e in plan.events if e.reason == reason] == ["Warning"]
    world.apply_ftj(plan)
    assert settle(world, "ftj").actions == ()


def test_a_complete_job_whose_stage_reported_failure_fails(world: World) -> None:
    settle(world, "ftj")
    world.finish_job(PREPARE, stage_result("prepare", ok=False, message="empty dataset"))
    cond = conditions(world.plan_ftj().status)
    assert cond["Failed"]["status"] == "True" and "empty dataset" in cond["Failed"]["message"]


def test_a_missing_model_waits(world: World) -> None:
    world.model = None
    plan = world.plan_ftj()
    assert plan.changes == ()
    prepared = conditions(plan.status)["Prepared"]
    assert prepared["reason"] == "ModelNotFound" and "tiny" in prepared["message"]
    assert plan.status["phase"] == "Pending"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ModelNotFound")]
    world.apply_ftj(plan)
    assert world.plan_ftj().events == ()  # once


def test_a_model_without_artifacts_storage_is_refused(world: World) -> None:
    del world.model["spec"]["artifacts"]
    plan = world.plan_ftj()
    assert plan.changes == ()
    failed = conditions(plan.status)["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert "artifacts.pvc" in failed["message"]


def test_multi_node_training_gets_its_rendezvous_service(world: World) -> None:
    world.ftj["spec"]["training"] = {"resources": {"gpus": 8, "nodes": 2}}
    settle(world, "ftj")
    world.finish_job(world.job("prepare"), stage_result("prepare"))
    plan = world.plan_ftj()
    kinds = [(a.kind, a.name) for a in plan.actions if isinstance(a, CreateChild)]
    train = kinds[-1][1]
    assert kinds == [("Service", train), ("Job", train)] and train.startswith("tiny-ft-train-")
    world.apply_ftj(plan)
    assert settle(world, "ftj").actions == ()


def test_start_from_serving_trains_on_the_served_revision(world: World) -> None:
    world.model["status"] = {"servingRevision": "older", "servingArtifact": "/artifacts/ml/older/model"}
    plan = world.plan_ftj()
    args = plan.actions[0].manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--start-model") + 1] == "/artifacts/ml/older/model"
    assert plan.status["artifacts"]["baseModel"] == "/artifacts/ml/older/model"
    # The starting point is part of the revision: another start, another directory.
    assert plan.status["artifacts"]["revision"] != REVISION.key


def test_start_from_serving_waits_while_nothing_is_served(world: World) -> None:
    world.ftj["spec"]["startFrom"] = "serving"
    plan = world.plan_ftj()
    assert plan.changes == ()
    assert conditions(plan.status)["Prepared"]["reason"] == "Waiting"


def test_last_transition_time_moves_only_with_the_status(world: World) -> None:
    world.apply_ftj(world.plan_ftj())
    first = conditions(world.ftj["status"])["Prepared"]["lastTransitionTime"]
    world.now = "2026-01-01T00:05:00Z"
    world.apply_ftj(world.plan_ftj())  # JobCreated -> JobRunning: still False
    assert conditions(world.ftj["status"])["Prepared"]["lastTransitionTime"] == first
    world.finish_job(PREPARE, stage_result("prepare"))
    world.apply_ftj(world.plan_ftj())
    assert conditions(world.ftj["status"])["Prepared"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_an_edit_of_the_gate_alone_re_runs_only_the_gate(world: World) -> None:
    run_to_evaluation(world, BAD)
    settle(world, "ftj")
    assert world.ftj["status"]["phase"] == "Rejected"
    world.ftj["metadata"]["generation"] = 4
    world.ftj["spec"]["evaluation"]["thresholds"] = {"maxPerplexity": 100}
    plan = world.plan_ftj()
    assert plan.changes == ()  # the same weights, the same evaluation: no Job
    cond = conditions(plan.status)
    assert cond["Passed"]["status"] == "True" and cond["Passed"]["observedGeneration"] == 4
    assert plan.status["artifacts"]["revision"] == REVISION.key


def test_a_training_edit_writes_a_new_revision_and_retires_the_old_one(world: World) -> None:
    old_root = run_to_evaluation(world, GOOD)
    settle(world, "ftj")  # passed, but never served
    old_jobs = set(world.jobs)
    world.ftj["metadata"]["generation"] = 4
    world.ftj["spec"]["training"] = {"learningRate": 0.001}
    plan = world.plan_ftj()
    [prepare] = [a for a in plan.actions if isinstance(a, CreateChild)]
    assert prepare.name.startswith("tiny-ft-prepare-") and prepare.name != PREPARE
    args = prepare.manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    new_root = args[args.index("--artifacts") + 1]
    assert new_root != old_root and new_root.startswith("/artifacts/ml/tiny-ft/")
    assert sorted(a.name for a in plan.actions if isinstance(a, DeleteChild)) == sorted(old_jobs)
    world.apply_ftj(plan)
    status = world.ftj["status"]
    assert status["artifacts"]["directory"] == new_root
    assert set(status["stages"]) == {"prepare"} and "completionTime" not in status["stages"]["prepare"]
    assert status["metrics"] == {}


def test_the_served_revision_keeps_its_jobs_and_files_when_the_spec_moves_on(world: World) -> None:
    old_root = run_to_evaluation(world, GOOD)
    promote(world)
    assert world.model["status"]["servingArtifact"] == f"{old_root}/model"
    world.ftj["metadata"]["generation"] = 4
    world.ftj["spec"]["training"] = {"learningRate": 0.001}
    plan = world.plan_ftj()
    assert not [a for a in plan.actions if isinstance(a, DeleteChild)]
    [prepare] = [a for a in plan.actions if isinstance(a, CreateChild)]
    args = prepare.manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--retain") + 1] == REVISION.key
    # The served revision stays served (and Promoted says so) while the new one trains.
    world.apply_ftj(plan)
    world.apply_model(world.plan_model())
    assert world.model["status"]["servingArtifact"] == f"{old_root}/model"


def test_a_complete_stage_without_a_readable_result_fails_instead_of_waiting(world: World) -> None:
    settle(world, "ftj")
    world.finish_job(PREPARE, "")
    cond = conditions(world.plan_ftj().status)
    assert cond["Failed"]["status"] == "True" and cond["Failed"]["reason"] == "ResultMissing"
    assert f"Pod {PREPARE}-abcde" in cond["Failed"]["message"]


def test_a_complete_job_whose_pod_still_shows_running_waits_for_its_result(world: World) -> None:
    """The Job's watch can bring Complete before the Pod's brings its terminated status: no Failed=True meanwhile."""
    from dataclasses import replace

    settle(world, "ftj")
    world.finish_job(PREPARE, stage_result("prepare"))
    done = world.jobs[PREPARE]
    world.jobs[PREPARE] = replace(done, pods=(replace(done.pods[0], phase="Running", message=""),))
    plan = world.plan_ftj()
    cond = conditions(plan.status)
    assert cond["Failed"]["status"] == "False" and cond["Prepared"]["status"] == "False"
    assert "reading its Pod's result" in cond["Prepared"]["message"]
    assert not [e for e in plan.events if e.type == "Warning"]
    world.apply_ftj(plan)
    world.jobs[PREPARE] = done  # the Pod's event arrives
    assert conditions(world.plan_ftj().status)["Prepared"]["status"] == "True"


def test_a_complete_stage_whose_pods_are_gone_unread_fails(world: World) -> None:
    from dataclasses import replace

    settle(world, "ftj")
    world.finish_job(PREPARE, "")
    world.jobs[PREPARE] = replace(world.jobs[PREPARE], pods=())
    failed = conditions(world.plan_ftj().status)["Failed"]
    assert failed["reason"] == "ResultMissing" and "none is left" in failed["message"]


def test_the_whole_lifecycle_settles_at_every_step(world: World) -> None:
    """After every transition, planning again after applying the plan gives no action, and the status reaches a
    fixed point (a created Job is seen running on the next pass; nothing moves after that)."""
    steps = [
        lambda: None,
        lambda: world.finish_job(PREPARE, stage_result("prepare", digest="sha256:abc")),
        lambda: world.finish_job(TRAIN, stage_result("train", digest="sha256:w1")),
        lambda: world.finish_job(EVALUATE, stage_result("evaluate", metrics=GOOD)),
    ]
    seen_events: list[str] = []
    for step in steps:
        step()
        plan = world.plan_ftj()
        seen_events += [e.reason for e in plan.events]
        world.apply_ftj(plan)
        again = world.plan_ftj()
        assert again.actions == (), again.actions
        world.apply_ftj(again)
        before = dict(world.ftj["status"])
        third = world.plan_ftj()
        world.apply_ftj(third)
        assert third.actions == () and world.ftj["status"] == before
    assert world.ftj["status"]["phase"] == "Passed"
    promote(world)
    assert world.ftj["status"]["phase"] == "Promoted"


def test_a_finished_run_keeps_its_status_when_its_gptmodel_is_deleted(world: World) -> None:
    run_to_evaluation(world, GOOD)
    settle(world, "ftj")
    world.model = None
    plan = world.plan_ftj()
    assert plan.changes == ()
    cond = conditions(plan.status)
    assert all(cond[t]["status"] == "True" for t in ("Prepared", "Trained", "Evaluated", "Passed"))
    assert cond["Promoted"]["status"] == "False" and cond["Promoted"]["reason"] == "ModelNotFound"


def test_a_running_stage_is_still_read_while_the_gptmodel_is_gone(world: World) -> None:
    settle(world, "ftj")
    world.model = None
    world.finish_job(PREPARE, stage_result("prepare"))
    plan = world.plan_ftj()
    assert plan.changes == ()  # no train Job without its GPTModel
    cond = conditions(plan.status)
    assert cond["Prepared"]["status"] == "True"
    assert cond["Trained"]["reason"] == "ModelNotFound"


def test_later_stages_start_from_where_the_run_started(world: World) -> None:
    settle(world, "ftj")  # started from the source: nothing was served
    world.model["status"] = {"servingRevision": "other", "servingArtifact": "/artifacts/ml/other/model"}
    world.finish_job(PREPARE, stage_result("prepare"))
    [train] = [a for a in world.plan_ftj().actions if isinstance(a, CreateChild)]
    assert "/artifacts/ml/other/model" not in " ".join(train.manifest["spec"]["template"]["spec"]["containers"][0]
                                                       ["args"])


@pytest.mark.parametrize(("pod", "reason", "said"), [
    (PodState(name="p", phase="Pending", unschedulable="0/2 nodes are available: 2 Insufficient nvidia.com/gpu."),
     "Unschedulable", "Pod p cannot be scheduled: 0/2 nodes are available"),
    (PodState(name="p", phase="Pending", waiting="ImagePullBackOff", waiting_message='Back-off pulling "x:1"'),
     "ImagePullBackOff", 'Pod p is waiting: ImagePullBackOff: Back-off pulling "x:1"'),
    (PodState(name="p", phase="Failed", reason="OOMKilled", exit_code=137),
     "AttemptFailed", "attempt 1 failed (OOMKilled, exit code 137); retrying"),
    (PodState(name="p", phase="Failed", reason="Error", exit_code=3, message="CUDA error: an illegal memory access"),
     "AttemptFailed", "attempt 1 failed (Error, exit code 3): CUDA error: an illegal memory access; retrying"),
], ids=["unschedulable", "image-pull", "oom-killed", "failed-attempt"])
def test_a_pod_level_cause_reaches_the_condition_and_one_warning_in_one_pass(world: World, pod, reason, said) -> None:
    from dataclasses import replace

    settle(world, "ftj")
    world.jobs[PREPARE] = replace(world.jobs[PREPARE], pods=(pod,), active=0 if pod.phase == "Failed" else 1)
    plan = world.plan_ftj()
    prepared = conditions(plan.status)["Prepared"]
    assert prepared["status"] == "False" and prepared["reason"] == reason and said in prepared["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", reason)]
    world.apply_ftj(plan)
    assert world.plan_ftj().events == ()  # the same cause is not news twice


def test_a_revision_rolled_back_from_stays_superseded(world: World) -> None:
    """The GPTModel rolls back to its source: the run it served says Superseded, pass after pass (it is not waiting:
    the GPTModel does not serve it again until its spec or the run's changes)."""
    run_to_evaluation(world, GOOD)
    promote(world)
    for key in ("servingRevision", "servingArtifact", "servingAdapter", "servingDigest", "servingPassedAt"):
        world.model["status"].pop(key, None)
    for _ in range(3):
        world.apply_ftj(world.plan_ftj())
        promoted = conditions(world.ftj["status"])["Promoted"]
        assert (promoted["status"], promoted["reason"]) == ("False", "Superseded"), promoted
        assert "superseded by its source" in promoted["message"]
    promote(world)
    assert conditions(world.ftj["status"])["Promoted"]["status"] == "True"


@pytest.mark.parametrize(("where", "queue"), [("ftj", "team-a"), ("model", "shared"), ("both", "team-a")])
def test_a_queued_stage_waits_in_kueue_and_says_queued(world: World, where: str, queue: str) -> None:
    if where in ("model", "both"):
        world.model["spec"]["scheduling"] = {"queueName": "shared"}
    if where in ("ftj", "both"):
        world.ftj["spec"]["scheduling"] = {"queueName": "team-a"}
    plan = world.plan_ftj()
    job = plan.actions[0].manifest
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == queue
    world.apply_ftj(plan)
    plan = world.plan_ftj()
    assert plan.actions == ()  # nothing unsuspends it but Kueue
    prepared = conditions(plan.status)["Prepared"]
    assert (prepared["status"], prepared["reason"]) == ("False", "Queued")
    assert f"queued in Kueue LocalQueue {queue}" in prepared["message"]
    assert plan.status["phase"] == "Queued"
    world.apply_ftj(plan)
    world.admit(PREPARE)
    plan = world.plan_ftj()
    assert conditions(plan.status)["Prepared"]["reason"] == "JobRunning"
    assert plan.status["phase"] == "Preparing"


def test_each_stage_job_is_queued_and_admission_moves_the_phase(world: World) -> None:
    world.ftj["spec"]["scheduling"] = {"queueName": "gpus"}
    settle(world, "ftj")
    world.admit(PREPARE)
    world.finish_job(PREPARE, stage_result("prepare", digest="sha256:abc"))
    settle(world, "ftj")
    assert world.jobs[TRAIN].suspended and world.jobs[TRAIN].queue == "gpus"
    status = world.ftj["status"]
    assert conditions(status)["Trained"]["reason"] == "Queued"
    assert conditions(status)["Prepared"]["status"] == "True"
    assert status["phase"] == "Queued"
    world.admit(TRAIN)
    settle(world, "ftj")
    assert world.ftj["status"]["phase"] == "Training"


def test_without_a_queue_jobs_start_unsuspended(world: World) -> None:
    job = world.plan_ftj().actions[0].manifest
    assert "suspend" not in job["spec"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
