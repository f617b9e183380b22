"""Table tests of plan_gptmodel: which revision is served, the Deployment and Service, the rollout watch, rollback,
and that planning again after applying a plan changes nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from reconcile_world import World, conditions, merge_patch, passed_finetunejob, settle

from gptops.reconcile import ApplyChild, CreateChild
from gptops.reconcile.gptmodel import ANNOTATION_ROLLED_BACK_FROM, ANNOTATION_ROLLOUT_STARTED

LATER = "2026-01-01T00:10:00Z"
PROMOTED = {"servingRevision": "ft-1", "servingArtifact": "/artifacts/ml/ft-1/model",
            "previousArtifact": "sshleifer/tiny-gpt2"}


def args(world: World) -> list[str]:
    assert world.deployment_manifest is not None
    return world.deployment_manifest["spec"]["template"]["spec"]["containers"][0]["args"]


def revision(world: World) -> str:
    assert world.deployment is not None
    return world.deployment.annotations["gptops.io/revision"]


def serve_source(world: World) -> None:
    settle(world, "model")
    world.roll_out()
    settle(world, "model")


def test_a_model_with_nothing_loadable_serves_nothing(world: World) -> None:
    world.model["spec"]["source"] = {"scratch": {}}
    plan = world.plan_model()
    assert plan.changes == ()
    cond = conditions(plan.status)
    assert cond["Ready"]["status"] == "False" and cond["Ready"]["reason"] == "NoRevision"
    assert "endpoint" not in plan.status or plan.status["endpoint"] is None


def test_a_new_model_gets_a_service_and_a_deployment_of_its_source(world: World) -> None:
    plan = world.plan_model()
    kinds = [(type(a).__name__, a.kind, a.name) for a in plan.changes]
    assert kinds == [("CreateChild", "Service", "tiny"), ("ApplyChild", "Deployment", "tiny")]
    dep = plan.changes[1].manifest
    assert dep["metadata"]["annotations"]["gptops.io/revision"] == "source"
    assert dep["metadata"]["annotations"][ANNOTATION_ROLLOUT_STARTED] == world.now
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-gm"
    assert plan.status["endpoint"] == "http://tiny.ml.svc:8000/v1"
    cond = conditions(plan.status)
    assert cond["Progressing"]["status"] == "True" and cond["Ready"]["status"] == "False"
    assert any(e.reason == "DeploymentCreated" for e in plan.events)


def test_an_available_deployment_makes_the_model_ready(world: World) -> None:
    settle(world, "model")
    world.roll_out()
    plan = world.plan_model()
    cond = conditions(plan.status)
    assert cond["Ready"]["status"] == "True" and cond["Ready"]["reason"] == "MinimumReplicasAvailable"
    assert cond["Progressing"]["status"] == "False" and cond["Progressing"]["reason"] == "RolloutComplete"
    assert cond["Degraded"]["status"] == "False"
    assert plan.status["readyReplicas"] == 1
    # The finished rollout costs no write of the Deployment (a new generation the controller would have to observe).
    assert plan.changes == ()
    world.apply_model(plan)
    assert settle(world, "model").actions == ()


def test_a_promoted_revision_is_rolled_out(world: World) -> None:
    serve_source(world)
    world.model["status"].update(PROMOTED)
    plan = world.plan_model()
    [apply] = plan.changes
    assert isinstance(apply, ApplyChild) and apply.manifest["metadata"]["annotations"]["gptops.io/revision"] == "ft-1"
    world.apply_model(plan)
    assert "/artifacts/ml/ft-1/model" in args(world)
    assert conditions(world.model["status"])["Progressing"]["reason"] == "RolloutInProgress"
    # Promotion wrote the serving fields; this pass must not write them back (it would race with promotion).
    assert "servingRevision" not in plan.status
    world.roll_out()
    settle(world, "model")
    assert conditions(world.model["status"])["Ready"]["status"] == "True"
    assert revision(world) == "ft-1"


def test_a_rollout_moving_through_its_replicas_writes_the_status_once_at_its_start_and_once_at_its_end(
        world: World) -> None:
    serve_source(world)
    world.model["status"].update(PROMOTED)
    world.apply_model(world.plan_model())  # the promotion's pass: the rollout starts
    started = world.model["status"]
    assert conditions(started)["Progressing"]["reason"] == "RolloutInProgress"
    dep = world.deployment
    assert dep is not None
    # The Deployment controller at work: the new Pod created, then ready beside the old one, then the old one gone.
    for updated, ready, available in ((1, 1, 1), (1, 2, 2), (1, 2, 1)):
        world.deployment = replace(dep, observed_generation=dep.generation, status_replicas=2,
                                   updated_replicas=updated, ready_replicas=ready, available_replicas=available,
                                   conditions=({"type": "Available", "status": "True"},))
        plan = world.plan_model()
        assert plan.actions == ()
        assert merge_patch(started, plan.status) == started, plan.status  # no status write
    world.roll_out()
    plan = world.plan_model()
    assert conditions(plan.status)["Progressing"]["reason"] == "RolloutComplete"
    assert plan.status["readyReplicas"] == 1 and plan.status["ready"] == "1/1"


def test_a_pin_wins_over_promotion(world: World) -> None:
    world.model["status"] = dict(PROMOTED)
    world.model["spec"]["serving"]["revision"] = "ft-0"
    world.finetunejobs["ft-0"] = passed_finetunejob("ft-0", artifacts={"model": "/artifacts/ml/ft-0/k/model"})
    # A newer passed candidate does not beat the pin.
    world.finetunejobs["ft-3"] = passed_finetunejob("ft-3", promote=True, passed_at="2026-01-01T00:30:00Z")
    plan = world.plan_model()
    assert plan.status["servingRevision"] == "ft-0" and plan.status["servingDigest"] == "sha256:ft-0"
    assert plan.status["previousRevision"] == "ft-1"
    assert plan.status["previousArtifact"] == "/artifacts/ml/ft-1/model"
    world.apply_model(plan)
    assert revision(world) == "ft-0" and "/artifacts/ml/ft-0/k/model" in args(world)
    assert settle(world, "model").changes == ()
    # The pin removed, the promotion order resumes: ft-3 passed after ft-0.
    world.model["spec"]["serving"].pop("revision")
    plan = world.plan_model()
    assert plan.status["servingRevision"] == "ft-3" and plan.status["previousRevision"] == "ft-0"


def test_a_pin_on_a_missing_or_unfinished_run_keeps_serving_and_says_why(world: World) -> None:
    serve_source(world)
    world.model["spec"]["serving"]["revision"] = "ft-9"
    plan = world.plan_model()
    assert plan.changes == ()
    cond = conditions(plan.status)
    assert cond["Ready"]["status"] == "True"  # the source still serves
    assert cond["Degraded"]["status"] == "True" and cond["Degraded"]["reason"] == "NoRevision"
    assert "no FineTuneJob ft-9" in cond["Degraded"]["message"]
    world.finetunejobs["ft-9"] = {"metadata": {"name": "ft-9", "namespace": "ml"},
                                  "spec": {"model": {"name": "tiny"},
                                           "dataset": {"source": {"pvc": {"claimName": "d", "path": "x"}}}}}
    plan = world.plan_model()
    cond = conditions(plan.status)
    assert plan.changes == () and cond["Degraded"]["status"] == "False"
    assert cond["Progressing"]["status"] == "True" and cond["Progressing"]["reason"] == "Waiting"
    assert "pass its gate" in cond["Progressing"]["message"]
    assert revision(world) == "source"
    # Trained but rejected by its gate: a pin does not serve it (the operator and gptops run share this rule).
    world.finetunejobs["ft-9"] = passed_finetunejob("ft-9", passed="False")
    plan = world.plan_model()
    cond = conditions(plan.status)
    assert plan.changes == () and cond["Degraded"]["reason"] == "GateNotPassed"
    assert revision(world) == "source"


def test_a_new_revision_that_misses_its_deadline_is_rolled_back(world: World) -> None:
    serve_source(world)
    world.model["status"].update(PROMOTED)
    settle(world, "model")
    world.stall()
    plan = world.plan_model()
    [apply] = plan.changes
    annotations = apply.manifest["metadata"]["annotations"]
    assert annotations["gptops.io/revision"] == "source"
    assert annotations[ANNOTATION_ROLLED_BACK_FROM] == "ft-1"
    assert ANNOTATION_ROLLOUT_STARTED not in annotations  # the way back is not watched
    assert plan.status["servingRevision"] is None and plan.status["servingArtifact"] == "sshleifer/tiny-gpt2"
    assert plan.status["previousArtifact"] is None
    degraded = conditions(plan.status)["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "RolledBack"
    assert "ft-1" in degraded["message"] and "ProgressDeadlineExceeded" in degraded["message"]
    assert [(e.type, e.reason) for e in plan.events if e.reason == "RolledBack"] == [("Warning", "RolledBack")]

    world.apply_model(plan)
    assert "sshleifer/tiny-gpt2" in args(world)
    world.roll_out()
    last = settle(world, "model")
    assert last.actions == ()
    cond = conditions(world.model["status"])
    assert cond["Degraded"]["status"] == "True" and cond["Ready"]["status"] == "True"


def test_a_rollout_without_progress_is_rolled_back_after_rollout_deadline_seconds(world: World) -> None:
    serve_source(world)
    world.model["status"].update(PROMOTED)
    settle(world, "model")
    assert world.plan_model().changes == ()  # within the deadline: wait
    world.now = LATER  # 600 s later; rolloutDeadlineSeconds is 60
    plan = world.plan_model()
    assert plan.changes and plan.changes[0].manifest["metadata"]["annotations"][ANNOTATION_ROLLED_BACK_FROM] == "ft-1"
    assert "rolloutDeadlineSeconds=60" in conditions(plan.status)["Degraded"]["message"]


def test_without_a_previous_revision_a_failed_rollout_is_degraded_in_place(world: World) -> None:
    settle(world, "model")
    world.stall()
    plan = world.plan_model()
    assert plan.changes == ()
    cond = conditions(plan.status)
    assert cond["Degraded"]["status"] == "True" and cond["Degraded"]["reason"] == "RolloutDeadlineExceeded"
    assert cond["Progressing"]["status"] == "False"


def test_a_rolled_out_revision_that_loses_pods_later_is_not_rolled_back(world: World) -> None:
    serve_source(world)
    world.model["status"].update(PROMOTED)
    settle(world, "model")
    world.roll_out()
    settle(world, "model")
    world.stall()
    world.now = LATER
    plan = world.plan_model()
    assert plan.changes == ()
    assert conditions(plan.status)["Degraded"]["status"] == "False"
    # Nor on any later pass: it stays rolled out, and Ready tells what is available.
    dep = world.deployment
    assert dep is not None
    world.deployment = replace(dep, ready_replicas=0, available_replicas=0)
    for _ in range(3):
        plan = settle(world, "model")
        assert plan.changes == ()
    cond = conditions(world.model["status"])
    assert cond["Progressing"]["reason"] == "RolloutComplete" and cond["Degraded"]["status"] == "False"
    assert cond["Ready"]["status"] == "False"


def test_a_pin_on_a_rolled_back_revision_is_not_retried_until_it_changes(world: World) -> None:
    serve_source(world)
    world.finetunejobs["ft-1"] = passed_finetunejob("ft-1")
    world.model["spec"]["serving"]["revision"] = "ft-1"
    settle(world, "model")
    assert revision(world) == "ft-1"
    world.stall()
    world.apply_model(world.plan_model())
    assert revision(world) == "source"
    world.roll_out()
    assert settle(world, "model").actions == ()
    assert revision(world) == "source"
    assert conditions(world.model["status"])["Degraded"]["status"] == "True"

    # A newer promotion rolls forward and clears Degraded.
    world.model["spec"]["serving"].pop("revision")
    world.model["status"].update(servingRevision="ft-2", servingArtifact="/artifacts/ml/ft-2/model",
                                 previousArtifact="sshleifer/tiny-gpt2")
    settle(world, "model")
    assert revision(world) == "ft-2"
    assert ANNOTATION_ROLLED_BACK_FROM not in world.deployment.annotations
    assert conditions(world.model["status"])["Degraded"]["status"] == "False"


def test_a_spec_change_after_a_rollback_retries_and_degraded_clears_when_the_cause_is_gone(world: World) -> None:
    serve_source(world)
    world.finetunejobs["ft-1"] = passed_finetunejob("ft-1")
    world.model["spec"]["serving"]["revision"] = "ft-1"
    settle(world, "model")
    world.stall()  # e.g. more GPUs asked for than any node has
    world.apply_model(world.plan_model())
    world.roll_out()
    settle(world, "model")
    assert revision(world) == "source" and conditions(world.model["status"])["Degraded"]["status"] == "True"

    # The cause fixed (a spec change: a new generation): the revision is tried again, Degraded no longer says so.
    world.model["spec"]["serving"]["resources"] = {"gpus": 1}
    world.model["metadata"]["generation"] = 2
    plan = world.plan_model()
    assert plan.status["servingRevision"] == "ft-1"
    world.apply_model(plan)
    assert revision(world) == "ft-1"
    assert conditions(world.model["status"])["Degraded"]["status"] == "False"
    world.roll_out()
    settle(world, "model")
    assert conditions(world.model["status"])["Progressing"]["reason"] == "RolloutComplete"


def test_what_kubectl_get_shows_names_the_source_and_the_revision(world: World) -> None:
    serve_source(world)
    assert (world.model["status"]["serving"], world.model["status"]["ready"]) == ("source", "1/1")
    world.finetunejobs["ft-1"] = passed_finetunejob("ft-1", promote=True)
    plan = world.plan_model()
    assert plan.status["serving"] == "ft-1 (0123456789)" and plan.status["ready"] == "1/1"


def test_a_spec_change_updates_the_deployment_in_place(world: World) -> None:
    serve_source(world)
    world.model["spec"]["serving"]["replicas"] = 3
    world.model["metadata"]["generation"] = 2
    plan = world.plan_model()
    [apply] = plan.changes
    assert apply.manifest["spec"]["replicas"] == 3
    annotations = apply.manifest["metadata"]["annotations"]
    assert annotations[ANNOTATION_ROLLOUT_STARTED] == world.now and annotations["gptops.io/rollout-of"] == "spec"
    assert plan.status["observedGeneration"] == 2
    world.apply_model(plan)
    assert settle(world, "model").changes == ()
    assert conditions(world.model["status"])["Progressing"]["status"] == "True"
    world.roll_out()
    settle(world, "model")
    assert conditions(world.model["status"])["Progressing"]["reason"] == "RolloutComplete"


def test_a_broken_change_to_the_served_revisions_spec_is_degraded_not_rolled_back(world: World) -> None:
    world.model["status"] = dict(PROMOTED)
    settle(world, "model")
    world.roll_out()
    settle(world, "model")
    world.model["spec"]["serving"]["resources"] = {"gpus": 64}  # no node has that many: its Pods never schedule
    world.model["metadata"]["generation"] = 2
    settle(world, "model")
    world.stall()
    world.now = LATER
    plan = world.plan_model()
    cond = conditions(plan.status)
    assert cond["Degraded"]["status"] == "True" and cond["Degraded"]["reason"] == "RolloutDeadlineExceeded"
    assert "the change to spec.serving (generation 2)" in cond["Degraded"]["message"]
    assert cond["Progressing"]["status"] == "False"
    assert "servingRevision" not in plan.status  # ft-1 stays served: rolling back would not fix the spec
    assert [e.type for e in plan.events if e.reason == "RolloutDeadlineExceeded"].count("Warning") == 1
    world.apply_model(plan)

    # Fixed: a new rollout of the same revision, watched anew; Degraded clears.
    world.model["spec"]["serving"]["resources"] = {"gpus": 1}
    world.model["metadata"]["generation"] = 3
    world.apply_model(world.plan_model())
    assert conditions(world.model["status"])["Degraded"]["status"] == "False"
    world.roll_out()
    settle(world, "model")
    assert conditions(world.model["status"])["Progressing"]["reason"] == "RolloutComplete"
    assert revision(world) == "ft-1"


def test_the_service_is_recreated_when_missing(world: World) -> None:
    serve_source(world)
    world.services.clear()
    plan = world.plan_model()
    assert [(type(a), a.kind) for a in plan.changes] == [(CreateChild, "Service")]


LORA_BASE = "sshleifer/tiny-gpt2"


def lora_status(prefix: str, revision: str, rank: int | None) -> dict:
    """The status fields promotion writes for a LoRA revision (no rank: a status written before it was recorded)."""
    fields = {f"{prefix}Revision": revision, f"{prefix}Artifact": LORA_BASE,
              f"{prefix}Adapter": f"/artifacts/ml/{revision}/adapter"}
    return fields | ({f"{prefix}LoraRank": rank} if rank is not None else {})


def opt(world: World, flag: str) -> str:
    return args(world)[args(world).index(flag) + 1]


@pytest.mark.parametrize(("rank", "max_lora_rank"),
                         [(None, "64"), (1, "1"), (8, "8"), (9, "16"), (64, "64"), (65, "128"), (300, "320"),
                          (321, "512"), (512, "512")])
def test_a_lora_revision_is_served_with_a_max_lora_rank_that_fits_its_rank(world: World, rank, max_lora_rank) -> None:
    world.model["status"] = lora_status("serving", "ft-lora", rank)
    settle(world, "model")
    assert opt(world, "--lora-modules") == "tiny=/artifacts/ml/ft-lora/adapter"
    assert opt(world, "--max-lora-rank") == max_lora_rank


def test_a_rollback_to_a_lora_revision_keeps_its_rank(world: World) -> None:
    world.model["status"] = lora_status("serving", "ft-1", 8) | lora_status("previous", "ft-0", 200)
    settle(world, "model")
    assert opt(world, "--max-lora-rank") == "8"
    world.stall()
    plan = world.plan_model()
    assert plan.status["servingRevision"] == "ft-0" and plan.status["servingLoraRank"] == 200
    assert plan.status["previousRevision"] is None and plan.status["previousLoraRank"] is None
    world.apply_model(plan)
    assert revision(world) == "ft-0" and opt(world, "--max-lora-rank") == "256"
    world.roll_out()
    assert settle(world, "model").actions == ()
    assert opt(world, "--max-lora-rank") == "256"


def test_a_pin_on_a_lora_run_records_its_rank_and_the_one_it_replaces(world: World) -> None:
    world.model["status"] = lora_status("serving", "ft-1", 16)
    world.model["spec"]["serving"]["revision"] = "ft-2"
    world.finetunejobs["ft-2"] = passed_finetunejob(
        "ft-2", training={"method": "lora", "lora": {"r": 100}},
        artifacts={"adapter": "/artifacts/ml/ft-2/k/adapter", "baseModel": LORA_BASE})
    plan = world.plan_model()
    assert plan.status["servingLoraRank"] == 100 and plan.status["previousLoraRank"] == 16
    world.apply_model(plan)
    assert revision(world) == "ft-2" and opt(world, "--max-lora-rank") == "128"
    assert settle(world, "model").changes == ()


def test_autoscaling_adds_an_autoscaler_and_removing_it_deletes_it(world: World) -> None:
    assert world.model is not None
    world.model["spec"]["serving"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}
    serve_source(world)
    assert world.autoscaler is not None and world.autoscaler["spec"]["maxReplicas"] == 4
    assert "replicas" not in world.deployment_manifest["spec"]
    assert world.plan_model().changes == ()  # applied once, not on every pass
    # The autoscaler scaled the Deployment to 3: READY counts against that, not spec.serving.replicas.
    assert world.deployment is not None
    world.deployment = replace(world.deployment, replicas=3, ready_replicas=3, available_replicas=3)
    assert world.plan_model().status["ready"] == "3/3"
    world.model["spec"]["serving"]["autoscaling"]["maxReplicas"] = 6
    changed = world.plan_model().changes
    assert [(type(a).__name__, a.kind) for a in changed] == [("ApplyChild", "HorizontalPodAutoscaler")]
    del world.model["spec"]["serving"]["autoscaling"]
    plan = settle(world, "model")
    assert world.autoscaler is None
    assert world.deployment_manifest["spec"]["replicas"] == world.model["spec"]["serving"].get("replicas", 1)
    assert plan.changes == ()


def lora_finetunejob(name: str, passed_at: str, rank: int = 8) -> dict:
    return passed_finetunejob(name, promote=True, passed_at=passed_at, training={"method": "lora", "lora": {"r": rank}},
                              artifacts={"adapter": f"/artifacts/ml/{name}/k/adapter", "baseModel": LORA_BASE})


def lora_modules(world: World) -> list[str]:
    a = args(world)
    start = a.index("--lora-modules") + 1
    return a[start:a.index("--max-lora-rank")]


def test_several_loras_of_one_base_are_served_side_by_side(world: World) -> None:
    """maxAdapters 2: promoting a second adapter adds it beside the first on the same base; a third drops the oldest;
    status lists the served adapters and the model name each is asked for by."""
    world.model["spec"]["serving"]["lora"] = {"maxAdapters": 2}
    world.finetunejobs["ft-a"] = lora_finetunejob("ft-a", "2026-01-01T00:01:00Z")
    settle(world, "model")
    world.roll_out()
    settle(world, "model")
    assert lora_modules(world) == ["tiny=/artifacts/ml/ft-a/k/adapter"]
    assert world.model["status"]["adapters"] == [
        {"revision": "ft-a", "modelName": "tiny", "adapter": "/artifacts/ml/ft-a/k/adapter"}]

    world.finetunejobs["ft-b"] = lora_finetunejob("ft-b", "2026-01-01T00:02:00Z", rank=32)
    settle(world, "model")
    assert args(world)[0] == LORA_BASE and revision(world) == "ft-b"  # the base stays; the adapters change
    assert lora_modules(world) == ["ft-a=/artifacts/ml/ft-a/k/adapter", "tiny=/artifacts/ml/ft-b/k/adapter"]
    assert opt(world, "--max-loras") == "2" and opt(world, "--max-lora-rank") == "32"
    assert [(a["revision"], a["modelName"]) for a in world.model["status"]["adapters"]] == \
        [("ft-a", "ft-a"), ("ft-b", "tiny")]
    world.roll_out()
    assert settle(world, "model").changes == ()

    world.finetunejobs["ft-c"] = lora_finetunejob("ft-c", "2026-01-01T00:03:00Z")
    settle(world, "model")
    assert lora_modules(world) == ["ft-b=/artifacts/ml/ft-b/k/adapter", "tiny=/artifacts/ml/ft-c/k/adapter"]

    # A full revision replaces the base: no adapters are served with it.
    world.finetunejobs["ft-full"] = passed_finetunejob("ft-full", promote=True, passed_at="2026-01-01T00:04:00Z",
                                                       artifacts={"model": "/artifacts/ml/ft-full/k/model"})
    settle(world, "model")
    assert "--enable-lora" not in args(world) and "adapters" not in world.model["status"]


def test_an_adapter_of_another_base_is_not_served_beside(world: World) -> None:
    world.model["spec"]["serving"]["lora"] = {"maxAdapters": 3}
    world.finetunejobs["ft-a"] = lora_finetunejob("ft-a", "2026-01-01T00:01:00Z")
    other = lora_finetunejob("ft-o", "2026-01-01T00:02:00Z")
    other["status"]["artifacts"]["baseModel"] = "/artifacts/ml/ft-full/k/model"
    world.finetunejobs["ft-o"] = other
    world.finetunejobs["ft-b"] = lora_finetunejob("ft-b", "2026-01-01T00:03:00Z")
    settle(world, "model")
    assert lora_modules(world) == ["ft-a=/artifacts/ml/ft-a/k/adapter", "tiny=/artifacts/ml/ft-b/k/adapter"]
    assert opt(world, "--max-loras") == "3"


def test_a_read_write_once_claim_that_pods_would_share_is_reported(world: World) -> None:
    """ArtifactsShared: True for a ReadWriteMany claim; for a ReadWriteOnce one, False with ReadWriteOnceClaim as soon
    as more than one Pod mounts it at once (vLLM replicas, a multi-node run, stage Pods beside the server)."""
    world.model["spec"]["artifacts"] = {"pvc": {"claimName": "store"}}
    world.model["spec"]["serving"]["replicas"] = 1
    generation = world.ftj["metadata"]["generation"]
    world.ftj["status"] = {"conditions": [{"type": "Passed", "status": "True", "reason": "ThresholdsMet",
                                          "observedGeneration": generation}], "observedGeneration": generation}
    serve_source(world)
    assert "ArtifactsShared" not in conditions(world.model["status"])  # the claim is not found (yet)

    world.artifacts_access_modes = ("ReadWriteMany",)
    plan = world.plan_model()
    assert conditions(plan.status)["ArtifactsShared"]["status"] == "True"
    assert conditions(plan.status)["ArtifactsShared"]["reason"] == "ReadWriteMany"

    world.artifacts_access_modes = ("ReadWriteOnce",)
    shared = conditions(world.plan_model().status)["ArtifactsShared"]
    assert (shared["status"], shared["reason"]) == ("True", "OnePodAtATime")  # one vLLM Pod, no run in flight

    world.model["spec"]["serving"]["replicas"] = 2
    plan = world.plan_model()
    shared = conditions(plan.status)["ArtifactsShared"]
    assert (shared["status"], shared["reason"]) == ("False", "ReadWriteOnceClaim")
    assert "claim store is ReadWriteOnce but up to 2 vLLM Pods" in shared["message"]
    assert "ReadWriteMany" in shared["message"]
    assert any(e.type == "Warning" and e.reason == "ReadWriteOnceClaim" for e in plan.events)

    world.model["spec"]["serving"]["replicas"] = 1
    world.ftj["status"] = {}
    world.ftj["spec"].setdefault("training", {})["resources"] = {"nodes": 2, "gpus": 1}
    shared = conditions(world.plan_model().status)["ArtifactsShared"]
    assert shared["status"] == "False" and "2 training nodes" in shared["message"]

    world.ftj["spec"]["training"]["resources"] = {"nodes": 1, "gpus": 1}
    shared = conditions(world.plan_model().status)["ArtifactsShared"]
    assert shared["status"] == "False" and "the vLLM Pod, FineTuneJob" in shared["message"]


def test_with_keda_autoscaling_is_a_scaled_object_that_may_scale_to_zero(world: World) -> None:
    """minReplicas 0 without KEDA is refused with a reason and nothing is made; once KEDA's CRDs are there the pass
    makes a ScaledObject instead of the HorizontalPodAutoscaler, and the other way round when KEDA goes."""
    world.model["spec"]["serving"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 4}
    serve_source(world)
    degraded = conditions(world.model["status"])["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ScaleToZeroNeedsKEDA")
    assert "minReplicas 0 needs KEDA" in degraded["message"] and "install KEDA or set minReplicas" in degraded["message"]
    assert world.autoscaler is None and world.scaled_object is None

    world.keda_prometheus = "http://prometheus.monitoring.svc:9090"
    settle(world, "model")
    assert conditions(world.model["status"])["Degraded"]["status"] == "False"
    assert world.autoscaler is None
    so = world.scaled_object
    assert so is not None and so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["name"] == "tiny"
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 4
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiny"}
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "4"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    assert trigger["metadata"]["query"] == \
        'sum(vllm:num_requests_waiting{namespace="ml",pod=~"tiny-[a-z0-9]{1,10}-[a-z0-9]{5}"})'
    assert world.plan_model().changes == ()  # applied once, not on every pass

    # KEDA goes: a HorizontalPodAutoscaler takes over (minReplicas 1 now), the ScaledObject is deleted.
    world.keda_prometheus = None
    world.model["spec"]["serving"]["autoscaling"]["minReplicas"] = 1
    settle(world, "model")
    assert world.scaled_object is None and world.autoscaler is not None
    world.keda_prometheus = "http://prometheus.monitoring.svc:9090"
    settle(world, "model")
    assert world.scaled_object is not None and world.autoscaler is None
    del world.model["spec"]["serving"]["autoscaling"]
    settle(world, "model")
    assert world.scaled_object is None and world.autoscaler is None
