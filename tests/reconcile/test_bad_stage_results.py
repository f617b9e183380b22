"""Malformed, oversized and missing stage results, at every stage: each ends the run with a Failed condition that names
the stage's Job (or, for an evaluation without the gate's numbers, Passed=False naming the metric), never an exception,
and the status stays small. One table; the planners see exactly what the Pod status would carry."""

from __future__ import annotations

import json

import pytest
from gptops.api.stageresult import MAX_BYTES, STAGE_RESULT_API_VERSION
from gptops.reconcile.finetunejob import MESSAGE_MAX
from reconcile_world import World, conditions, settle, stage_result

HUGE = stage_result("train", message="x" * 20_000)
BAD_RESULTS = {
    # name: (the termination message, or a function of the stage giving it)
    "missing": "",
    "whitespace": "   \n",
    "not-json": "{oops",
    "truncated": lambda stage: stage_result(stage, metrics={"perplexity": 3.0})[:40],
    "oversized-cut-by-kubernetes": lambda stage: stage_result(stage, message="x" * 20_000)[:MAX_BYTES],
    "json-array": "[1, 2, 3]",
    "json-null": "null",
    "json-number": "42",
    "wrong-api-version": lambda stage: stage_result(stage).replace(STAGE_RESULT_API_VERSION, "gptops.io/stage-result/v0"),
    "another-stage": lambda stage: stage_result("monitor"),
    "ok-not-a-bool": lambda stage: json.dumps({"apiVersion": STAGE_RESULT_API_VERSION, "stage": stage, "ok": "maybe"}),
    "no-ok": lambda stage: json.dumps({"apiVersion": STAGE_RESULT_API_VERSION, "stage": stage}),
    "stage-a-number": lambda stage: json.dumps({"apiVersion": STAGE_RESULT_API_VERSION, "stage": 7, "ok": True}),
    "binary": bytes(range(256)).decode("latin-1"),
    "replacement-chars": "\ufffd" * 3000,
}


def _message(bad, stage: str) -> str:
    return bad(stage) if callable(bad) else bad


def _finish_before(world: World, stage: str) -> None:
    """Drive the stages before `stage` to success."""
    settle(world, "ftj")
    root = world.ftj["status"]["artifacts"]["directory"]
    if stage in ("train", "evaluate"):
        world.finish_job(world.job("prepare"), stage_result("prepare", digest="sha256:d",
                                                            artifacts={"dataset": f"{root}/dataset"}))
        settle(world, "ftj")
    if stage == "evaluate":
        world.finish_job(world.job("train"), stage_result("train", digest="sha256:w",
                                                          artifacts={"model": f"{root}/model"}))
        settle(world, "ftj")


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate"])
@pytest.mark.parametrize("exit_ok", [True, False], ids=["exit-0", "exit-1"])
@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_a_bad_stage_result_fails_the_run_naming_the_job(world: World, stage: str, exit_ok: bool, case: str) -> None:
    _finish_before(world, stage)
    job = world.job(stage)
    world.finish_job(job, _message(BAD_RESULTS[case], stage), ok=exit_ok)
    plan = world.plan_ftj()
    cond = conditions(plan.status)
    failed = cond["Failed"]
    assert failed["status"] == "True", failed
    assert failed["reason"] == ("ResultMissing" if exit_ok else "JobFailed")
    assert job in failed["message"] and stage in failed["message"]
    if exit_ok:
        assert f"Pod {job}-abcde" in failed["message"] and STAGE_RESULT_API_VERSION in failed["message"]
    assert plan.status["phase"] == "Failed" and (cond["Passed"]["status"], cond["Promoted"]["status"]) == ("False", "False")
    assert all(len(c.get("message", "")) <= MESSAGE_MAX for c in cond.values())
    assert len(json.dumps(plan.status)) < 4 * MAX_BYTES  # nothing of the garbage is copied in whole
    assert not [a for a in plan.changes if getattr(a, "kind", "") == "Job"]  # no later stage starts
    world.apply_ftj(plan)
    assert settle(world, "ftj").actions == ()


@pytest.mark.parametrize("metrics", [{}, {"perplexity": "low"}, {"perplexity": float("nan")}, {"bleu": 3.0}],
                         ids=["none", "a-string", "nan", "another-metric"])
def test_an_evaluation_without_the_gates_number_does_not_pass(world: World, metrics) -> None:
    _finish_before(world, "evaluate")
    raw = json.dumps({"apiVersion": STAGE_RESULT_API_VERSION, "stage": "evaluate", "ok": True, "message": "done",
                      "metrics": metrics})
    world.finish_job(world.job("evaluate"), raw)
    plan = world.plan_ftj()
    cond = conditions(plan.status)
    assert cond["Evaluated"]["status"] == "True"
    assert cond["Passed"]["status"] == "False" and "perplexity" in cond["Passed"]["message"]
    assert cond["Promoted"]["status"] == "False"
    world.apply_ftj(plan)
    world.apply_model(world.plan_model())
    assert "servingRevision" not in (world.model.get("status") or {})


def test_the_table_is_what_the_stage_result_parser_refuses() -> None:
    """Every case above is really unreadable to the operator (else the table would test nothing)."""
    from gptops.api.stageresult import parse_stage_result

    for stage in ("prepare", "train", "evaluate"):
        for case, bad in BAD_RESULTS.items():
            assert parse_stage_result(_message(bad, stage), stage=stage) is None, case
    assert len(HUGE.encode()) > MAX_BYTES
