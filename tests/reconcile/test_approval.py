"""Human review (evaluation.approval: manual) through the real planners: a passed revision waits for a person, is
served once approved, never when rejected, and an approval never carries over to another revision."""

from __future__ import annotations

from typing import Any

import pytest
from reconcile_world import World, conditions, settle, stage_result

from gptops.api.constants import ANNOTATION_APPROVED, ANNOTATION_APPROVED_REVISION
from gptops.reconcile.plan import EmitEvent

GOOD = {"perplexity": 20.0, "baselinePerplexity": 40.0}
SAMPLES = [{"prompt": f"q{i}", "reference": f"r{i}", "output": "x" * 400, "baseOutput": "b"} for i in range(5)]


def finish(world: World, stage: str, message: str) -> None:
    settle(world, "ftj")
    world.finish_job(world.job(stage), message)
    settle(world, "ftj")


def run_to_gate(world: World) -> None:
    world.ftj["spec"]["evaluation"]["approval"] = "manual"
    finish(world, "prepare", stage_result("prepare"))
    finish(world, "train", stage_result("train", digest="sha256:w"))
    finish(world, "evaluate", stage_result("evaluate", metrics=GOOD, samples=SAMPLES))


def annotate(world: World, **values: str) -> None:
    keys = {"approved": ANNOTATION_APPROVED, "revision": ANNOTATION_APPROVED_REVISION}
    world.ftj["metadata"].setdefault("annotations", {}).update({keys[k]: v for k, v in values.items()})


def promoted(world: World) -> dict[str, Any]:
    return conditions(world.ftj["status"])["Promoted"]


def serves(world: World) -> str | None:
    """What the GPTModel's pass serves now (its rollout completes at once)."""
    settle(world, "model")
    if world.deployment is not None:
        world.roll_out()
        settle(world, "model")
    return ((world.model or {}).get("status") or {}).get("servingRevision")


def test_a_passed_manual_run_waits_for_a_person_with_an_event_that_says_how(world: World) -> None:
    world.ftj["spec"]["evaluation"]["approval"] = "manual"
    finish(world, "prepare", stage_result("prepare"))
    finish(world, "train", stage_result("train", digest="sha256:w"))
    settle(world, "ftj")
    world.finish_job(world.job("evaluate"), stage_result("evaluate", metrics=GOOD, samples=SAMPLES))
    plan = world.plan_ftj()
    events = [a for a in plan.actions if isinstance(a, EmitEvent) and a.reason == "AwaitingApproval"]
    world.apply_ftj(plan)
    key = world.ftj["status"]["artifacts"]["revision"]
    assert len(events) == 1 and events[0].type == "Normal"
    assert f"gptops.io/approved=true gptops.io/approved-revision={key}" in events[0].message
    assert promoted(world)["status"] == "False" and promoted(world)["reason"] == "AwaitingApproval"
    assert world.ftj["status"]["phase"] == "AwaitingApproval"
    assert world.ftj["status"]["approval"] == {"revision": key, "decision": "Pending"}
    assert serves(world) is None  # nothing is served before a person says so
    settle(world, "ftj")  # the event is not repeated on the next pass
    assert not [a for a in world.plan_ftj().actions if isinstance(a, EmitEvent)]


def test_samples_reach_status_bounded(world: World) -> None:
    run_to_gate(world)
    samples = world.ftj["status"]["samples"]
    assert [s["prompt"] for s in samples] == ["q0", "q1", "q2"]
    assert all(len(s["output"]) <= 160 for s in samples) and samples[0]["baseOutput"] == "b"


def test_approval_promotes_and_rejection_does_not(world: World) -> None:
    run_to_gate(world)
    annotate(world, approved="true")
    settle(world, "ftj")
    assert world.ftj["status"]["approval"]["decision"] == "Approved"
    assert serves(world) == "tiny-ft"
    settle(world, "ftj")
    assert promoted(world)["status"] == "True"


@pytest.mark.parametrize("value", ["false", "False"])
def test_a_rejected_run_is_never_served(world: World, value: str) -> None:
    run_to_gate(world)
    annotate(world, approved=value)
    settle(world, "ftj")
    assert promoted(world)["reason"] == "Rejected" and world.ftj["status"]["phase"] == "Rejected"
    assert serves(world) is None


def test_a_value_that_is_not_a_decision_is_named(world: World) -> None:
    run_to_gate(world)
    annotate(world, approved="yes")
    settle(world, "ftj")
    assert promoted(world)["reason"] == "AwaitingApproval"
    assert "gptops.io/approved='yes' is not a decision" in promoted(world)["message"]


def test_an_approval_of_another_revision_does_not_promote(world: World) -> None:
    run_to_gate(world)
    annotate(world, approved="true", revision="0123456789ab")
    settle(world, "ftj")
    assert promoted(world)["reason"] == "AwaitingApproval"
    assert "names revision 0123456789ab, not the current revision" in promoted(world)["message"]
    assert serves(world) is None
    del world.ftj["metadata"]["annotations"][ANNOTATION_APPROVED_REVISION]  # the plain approval then counts
    settle(world, "ftj")
    assert world.ftj["status"]["approval"]["decision"] == "Approved" and serves(world) == "tiny-ft"


def new_revision(world: World) -> str:
    """Edit the training spec (a new revision) and run it to its gate."""
    old = world.ftj["status"]["artifacts"]["revision"]
    world.ftj["spec"].setdefault("training", {})["learningRate"] = 0.001
    world.ftj["metadata"]["generation"] += 1
    world.now = "2026-01-01T01:00:00Z"
    finish(world, "prepare", stage_result("prepare"))
    finish(world, "train", stage_result("train", digest="sha256:w2"))
    finish(world, "evaluate", stage_result("evaluate", metrics=GOOD))
    key = world.ftj["status"]["artifacts"]["revision"]
    assert key != old
    return key


@pytest.mark.parametrize("bound", [False, True])
def test_an_approval_does_not_carry_over_to_a_new_revision(world: World, bound: bool) -> None:
    run_to_gate(world)
    first = world.ftj["status"]["artifacts"]["revision"]
    annotate(world, approved="true", **({"revision": first} if bound else {}))
    settle(world, "ftj")
    assert serves(world) == "tiny-ft"
    second = new_revision(world)
    assert promoted(world)["reason"] in ("AwaitingApproval", "Superseded"), promoted(world)
    assert world.ftj["status"]["approval"] == {"revision": second, "decision": "Pending", "unbound": "true"}
    assert serves(world) == "tiny-ft"
    assert world.model["status"]["servingDigest"] == "sha256:w"  # still the first revision's weights
    if not bound:  # the same unbound value stays the first revision's, also on later passes
        settle(world, "ftj")
        assert world.ftj["status"]["approval"]["decision"] == "Pending"
    annotate(world, approved="true", revision=second)
    settle(world, "ftj")
    assert world.ftj["status"]["approval"] == {"revision": second, "decision": "Approved", "unbound": "true"}
    assert serves(world) == "tiny-ft" and world.model["status"]["servingDigest"] == "sha256:w2"


def test_a_pin_on_a_run_awaiting_approval_waits_and_a_rejected_one_is_degraded(world: World) -> None:
    run_to_gate(world)
    world.model["spec"]["serving"]["revision"] = "tiny-ft"
    world.model["metadata"]["generation"] = 2
    assert serves(world) is None
    progressing = conditions(world.model["status"])["Progressing"]
    assert progressing["reason"] == "AwaitingApproval" and "waits for a person's approval" in progressing["message"]
    annotate(world, approved="false")
    settle(world, "ftj")
    assert serves(world) is None
    assert conditions(world.model["status"])["Degraded"]["reason"] == "Rejected"
