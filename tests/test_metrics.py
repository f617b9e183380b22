"""The operator's metrics: names and labels as documented, and series that follow the objects they describe."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from gptops import metrics


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_finetunejobs_are_counted_by_phase_and_move_between_phases() -> None:
    metrics.record_finetunejob_phase("m1", "a", "Training")
    metrics.record_finetunejob_phase("m1", "b", "Training")
    assert value("gptops_finetunejobs", phase="Training") == 2
    metrics.record_finetunejob_phase("m1", "a", "Promoted")
    assert value("gptops_finetunejobs", phase="Training") == 1
    assert value("gptops_finetunejobs", phase="Promoted") == 1
    metrics.forget_finetunejob("m1", "b")
    assert value("gptops_finetunejobs", phase="Training") == 0


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
    metrics.PROMOTIONS_TOTAL.inc()
    metrics.ROLLBACKS_TOTAL.inc()
    text = generate_latest(REGISTRY).decode()
    for name in ("gptops_reconcile_total", "gptops_reconcile_errors_total", "gptops_reconcile_duration_seconds",
                 "gptops_finetunejobs", "gptops_stage_duration_seconds", "gptops_evaluation_metric",
                 "gptops_promotions_total", "gptops_rollbacks_total", "gptops_serving_revision_info"):
        assert f"# TYPE {name}" in text, name
