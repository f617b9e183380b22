"""The operator's metrics: names and labels as documented, and series that follow the objects they describe."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from gptops import metrics


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_finetunejobs_are_counted_by_namespace_and_phase_and_move_between_phases() -> None:
    metrics.record_finetunejob_phase("m1", "a", "Training")
    metrics.record_finetunejob_phase("m1", "b", "Training")
    metrics.record_finetunejob_phase("m1b", "c", "Training")
    assert value("gptops_finetunejobs", namespace="m1", phase="Training") == 2
    metrics.record_finetunejob_phase("m1", "a", "Passed")
    assert value("gptops_finetunejobs", namespace="m1", phase="Training") == 1
    assert value("gptops_finetunejobs", namespace="m1", phase="Passed") == 1
    assert value("gptops_finetunejobs", namespace="m1b", phase="Training") == 1
    metrics.forget_finetunejob("m1", "b", "uid-b")
    assert value("gptops_finetunejobs", namespace="m1", phase="Training") == 0


def test_a_pass_that_raced_the_delete_does_not_count_the_run_again() -> None:
    metrics.record_finetunejob_phase("m4", "x", "Preparing", "uid-x")
    metrics.forget_finetunejob("m4", "x", "uid-x")
    metrics.record_finetunejob_phase("m4", "x", "Preparing", "uid-x")  # a pass that read it before the delete
    assert value("gptops_finetunejobs", namespace="m4", phase="Preparing") == 0
    metrics.record_finetunejob_phase("m4", "x", "Preparing", "uid-x2")  # a new object of the same name counts
    assert value("gptops_finetunejobs", namespace="m4", phase="Preparing") == 1


def test_a_new_revision_clears_the_old_evaluation_numbers() -> None:
    metrics.record_evaluation("m5", "run", {"perplexity": 12.5, "bleu": 3.0})
    metrics.record_evaluation("m5", "run", {})  # edited: the new revision is not evaluated yet
    assert value("gptops_evaluation_metric", namespace="m5", finetunejob="run", metric="perplexity") is None


def test_gptmodel_conditions_are_gauges_that_go_with_the_model() -> None:
    metrics.record_gptmodel_conditions("m6", "gm", {"Ready": True, "Degraded": False})
    assert value("gptops_gptmodel_condition", namespace="m6", model="gm", condition="Ready") == 1
    assert value("gptops_gptmodel_condition", namespace="m6", model="gm", condition="Degraded") == 0
    metrics.record_gptmodel_conditions("m6", "gm", None)
    assert value("gptops_gptmodel_condition", namespace="m6", model="gm", condition="Ready") is None


def test_evaluation_numbers_are_published_and_dropped_with_the_run() -> None:
    metrics.record_evaluation("m2", "run", {"perplexity": 12.5, "bleu": 3.0})
    assert value("gptops_evaluation_metric", namespace="m2", finetunejob="run", metric="perplexity") == 12.5
    metrics.forget_finetunejob("m2", "run")
    assert value("gptops_evaluation_metric", namespace="m2", finetunejob="run", metric="bleu") is None


def test_the_served_revision_has_one_series_per_model() -> None:
    metrics.record_serving_revision("m3", "gm", "ft-1")
    metrics.record_serving_revision("m3", "gm", "ft-2")
    assert value("gptops_serving_revision_info", namespace="m3", model="gm", revision="ft-1") is None
    assert value("gptops_serving_revision_info", namespace="m3", model="gm", revision="ft-2") == 1
    metrics.record_serving_revision("m3", "gm", None)
    assert value("gptops_serving_revision_info", namespace="m3", model="gm", revision="ft-2") is None


def test_every_documented_metric_is_exposed() -> None:
    metrics.RECONCILE_TOTAL.labels(kind="GPTModel", result="ok").inc()
    metrics.RECONCILE_ERRORS_TOTAL.labels(kind="GPTModel").inc()
    metrics.RECONCILE_DURATION_SECONDS.labels(kind="GPTModel").observe(0.1)
    metrics.STAGE_DURATION_SECONDS.labels(stage="train").observe(60)
    metrics.PROMOTIONS_TOTAL.labels(namespace="m7", model="gm").inc()
    metrics.ROLLBACKS_TOTAL.labels(namespace="m7", model="gm").inc()
    metrics.STAGE_FAILURES_TOTAL.labels(stage="train", reason="StageFailed").inc()
    metrics.record_gptmodel_conditions("m7", "gm", {"Ready": True})
    text = generate_latest(REGISTRY).decode()
    for name in ("gptops_reconcile_total", "gptops_reconcile_errors_total", "gptops_reconcile_duration_seconds",
                 "gptops_reconcile_queue_seconds",
                 "gptops_finetunejobs", "gptops_stage_duration_seconds", "gptops_evaluation_metric",
                 "gptops_promotions_total", "gptops_rollbacks_total", "gptops_serving_revision_info",
                 "gptops_stage_failures_total", "gptops_gptmodel_condition"):
        assert f"# TYPE {name}" in text, name


def test_live_series_follow_the_last_monitor_run_and_go_with_the_model() -> None:
    run = {"lastRun": {"job": "gm-monitor-abc-0", "revision": "ft-1", "result": "drifted"},
           "live": {"perplexity": 60.0, "bleu": 3.0}, "atPromotion": {"perplexity": 42.0, "bleu": 3.5},
           "inputPsi": 0.3}
    metrics.record_live("m9", "gm", run)
    assert value("gptops_live_metric", namespace="m9", model="gm", revision="ft-1", metric="perplexity") == 60
    assert value("gptops_live_baseline_metric", namespace="m9", model="gm", revision="ft-1", metric="bleu") == 3.5
    assert value("gptops_live_input_psi", namespace="m9", model="gm", revision="ft-1") == 0.3
    # The next revision's run replaces the series; it measured BLEU only and no PSI.
    metrics.record_live("m9", "gm", {"lastRun": {"job": "gm-monitor-def-0", "revision": "ft-2", "result": "ok"},
                                     "live": {"bleu": 4.0}, "atPromotion": {"bleu": 3.9}})
    assert value("gptops_live_metric", namespace="m9", model="gm", revision="ft-1", metric="perplexity") is None
    assert value("gptops_live_input_psi", namespace="m9", model="gm", revision="ft-1") is None
    assert value("gptops_live_metric", namespace="m9", model="gm", revision="ft-2", metric="bleu") == 4
    # A failed run publishes no live numbers; a deleted model none at all.
    metrics.record_live("m9", "gm", {"lastRun": {"job": "gm-monitor-def-1", "revision": "ft-2", "result": "error"}})
    assert value("gptops_live_metric", namespace="m9", model="gm", revision="ft-2", metric="bleu") is None
    metrics.record_live("m9", "gm", run)
    metrics.record_live("m9", "gm", None)
    text = generate_latest(REGISTRY).decode()
    assert not [line for line in text.splitlines() if line.startswith("gptops_live_") and 'namespace="m9"' in line]
    metrics.record_gptmodel_conditions("m9", "gm", {"Drifted": True})
    assert value("gptops_gptmodel_condition", namespace="m9", model="gm", condition="Drifted") == 1
