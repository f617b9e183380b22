"""Every Prometheus metric of the operator, defined once, and the HTTP server that exposes them.

Imports prometheus_client only; handlers record, nothing else does. Label sets are bounded (kinds, stages,
phases, metric names) except the per-object ones, which follow the objects that exist.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DEFAULT_PORT = 8080

RECONCILE_TOTAL = Counter(
    "gptops_reconcile_total",
    "Reconcile passes, by kind and result (ok, error).",
    ["kind", "result"],
)
RECONCILE_ERRORS_TOTAL = Counter(
    "gptops_reconcile_errors_total",
    "Reconcile passes that raised an error.",
    ["kind"],
)
RECONCILE_DURATION_SECONDS = Histogram(
    "gptops_reconcile_duration_seconds",
    "Time spent in one reconcile pass (observe, plan, apply).",
    ["kind"],
)
RECONCILE_QUEUE_SECONDS = Histogram(
    "gptops_reconcile_queue_seconds",
    "Time a pass waited in the work queue, from the first request to its start, by kind and lane (first: an "
    "object's first pass; event: a pass an event asked for; retry: after a backoff; background: the resync's).",
    ["kind", "lane"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RECONCILE_WAKES_TOTAL = Counter(
    "gptops_reconcile_wakes_total",
    "Requests for a pass, by kind, what asked for it (its own event, a child's, another kind's, the resync, a retry) "
    "and what the work queue did (queued; merged into a pass already waiting; rerun after the one running).",
    ["kind", "source", "outcome"],
)
FINETUNEJOBS = Gauge(
    "gptops_finetunejobs",
    "FineTuneJobs known to this operator, by namespace and phase.",
    ["namespace", "phase"],
)
STAGE_FAILURES_TOTAL = Counter(
    "gptops_stage_failures_total",
    "Stages that failed a FineTuneJob, by stage and condition reason (StageFailed, JobFailed, ResultMissing, ...).",
    ["stage", "reason"],
)
GPTMODEL_CONDITION = Gauge(
    "gptops_gptmodel_condition",
    "1 when a GPTModel's condition (Ready, Progressing, Degraded, Drifted) is True, else 0.",
    ["namespace", "model", "condition"],
)
STAGE_DURATION_SECONDS = Histogram(
    "gptops_stage_duration_seconds",
    "Wall time of a finished stage Job, from start to completion.",
    ["stage"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 72 * 3600),
)
EVALUATION_METRIC = Gauge(
    "gptops_evaluation_metric",
    "The evaluation numbers of a FineTuneJob (perplexity, bleu, baselines).",
    ["namespace", "finetunejob", "metric"],
)
PROMOTIONS_TOTAL = Counter(
    "gptops_promotions_total",
    "Changes of a GPTModel's served revision by promotion or pin.",
    ["namespace", "model"],
)
ROLLBACKS_TOTAL = Counter(
    "gptops_rollbacks_total",
    "Serving revisions rolled back because the new one did not become Available in time.",
    ["namespace", "model"],
)
SERVING_REVISION_INFO = Gauge(
    "gptops_serving_revision_info",
    "1 for the revision a GPTModel serves.",
    ["namespace", "model", "revision"],
)

RESYNC_TIMESTAMP_SECONDS = Gauge(
    "gptops_resync_timestamp_seconds",
    "Unix time the resync loop last went over every watched object (also when there are none): the control loop is "
    "alive.",
)
LIVE_METRIC = Gauge(
    "gptops_live_metric",
    "The latest live evaluation of a GPTModel's served revision (perplexity, bleu), by the monitor Job.",
    ["namespace", "model", "revision", "metric"],
)
LIVE_BASELINE_METRIC = Gauge(
    "gptops_live_baseline_metric",
    "The value the served revision was promoted with (its FineTuneJob's evaluation), for gptops_live_metric.",
    ["namespace", "model", "revision", "metric"],
)
LIVE_INPUT_PSI = Gauge(
    "gptops_live_input_psi",
    "Population stability index of live prompt lengths since the previous monitor run against the dataset's.",
    ["namespace", "model", "revision"],
)
LIVE_RUNS_TOTAL = Counter(
    "gptops_live_runs_total",
    "Finished monitor runs of a GPTModel, by result (ok, drifted, error).",
    ["namespace", "model", "result"],
)


# Counters at 0 from the start, so that a clean run has the series and the first error or failure is an increase.
for _kind in ("GPTModel", "FineTuneJob"):
    RECONCILE_ERRORS_TOTAL.labels(kind=_kind)
for _stage in ("prepare", "train", "evaluate"):
    for _reason in ("StageFailed", "JobFailed", "ResultMissing"):
        STAGE_FAILURES_TOTAL.labels(stage=_stage, reason=_reason)

_finetunejob_phases: dict[tuple[str, str], str] = {}
_served: dict[tuple[str, str], str] = {}
_phases_lock = threading.Lock()
#: (namespace, FineTuneJob) -> the evaluation numbers it publishes.
_evaluations: dict[tuple[str, str], dict[str, float]] = {}
_evaluation_lock = threading.Lock()
#: uids of deleted FineTuneJobs: a pass that raced the delete must not count them again.
_gone: set[str] = set()


def record_finetunejob_phase(namespace: str, name: str, phase: str | None, uid: str = "") -> None:
    """Count a FineTuneJob under its current phase (None: it is gone, for good when `uid` is given). Passes call it
    from many threads at once; O(1) per call."""
    key = (namespace, name)
    with _phases_lock:
        before = _finetunejob_phases.get(key)
        after = before
        if phase is None:
            _finetunejob_phases.pop(key, None)
            after = None
            if uid:
                _gone.add(uid)
        elif uid not in _gone:
            _finetunejob_phases[key] = after = phase
        if before == after:
            return
        if before is not None:
            FINETUNEJOBS.labels(namespace=namespace, phase=before).dec()
        if after is not None:
            FINETUNEJOBS.labels(namespace=namespace, phase=after).inc()


def record_evaluation(namespace: str, name: str, numbers: dict[str, float]) -> None:
    """Publish a FineTuneJob's evaluation numbers, exactly these: a new revision's empty numbers clear the old.
    O(1) per call (every FineTuneJob pass calls it): the series each FineTuneJob has are remembered here, not
    looked up in the gauge, whose collection walks every FineTuneJob's series."""
    key = (namespace, name)
    with _evaluation_lock:
        before = _evaluations.get(key, {})
        if before == numbers:
            return
        for metric in set(before) - set(numbers):
            EVALUATION_METRIC.remove(namespace, name, metric)
        for metric, value in numbers.items():
            EVALUATION_METRIC.labels(namespace=namespace, finetunejob=name, metric=metric).set(value)
        if numbers:
            _evaluations[key] = dict(numbers)
        else:
            _evaluations.pop(key, None)


def forget_finetunejob(namespace: str, name: str, uid: str = "") -> None:
    """Drop the series of a deleted FineTuneJob."""
    record_finetunejob_phase(namespace, name, None, uid)
    record_evaluation(namespace, name, {})


def record_gptmodel_conditions(namespace: str, model: str, conditions: dict[str, bool] | None) -> None:
    """Set a GPTModel's condition gauges (None: the model is gone, drop them)."""
    for counter in (PROMOTIONS_TOTAL, ROLLBACKS_TOTAL):  # at 0 from the start, so the first one is an increase
        if conditions is None:
            try:
                counter.remove(namespace, model)
            except KeyError:
                pass
        else:
            counter.labels(namespace=namespace, model=model)
    for condition in ("Ready", "Progressing", "Degraded", "Drifted"):
        if conditions is None:
            try:
                GPTMODEL_CONDITION.remove(namespace, model, condition)
            except KeyError:
                pass
        else:
            GPTMODEL_CONDITION.labels(namespace=namespace, model=model, condition=condition).set(
                1 if conditions.get(condition) else 0)


def record_serving_revision(namespace: str, model: str, revision: str | None) -> None:
    """Set the served revision of a GPTModel (None: nothing served, or the model is gone)."""
    key = (namespace, model)
    old = _served.get(key)
    if old == revision:
        return
    if old is not None:
        SERVING_REVISION_INFO.remove(namespace, model, old)
    if revision is None:
        _served.pop(key, None)
    else:
        _served[key] = revision
        SERVING_REVISION_INFO.labels(namespace=namespace, model=model, revision=revision).set(1)


def record_live(namespace: str, model: str, monitoring: dict[str, Any] | None) -> None:
    """Publish a GPTModel's status.monitoring: exactly the series of its last run's revision (None: drop them all)."""
    run = (monitoring or {}).get("lastRun") or {}
    revision = run.get("revision") if run.get("result") in ("ok", "drifted") else None
    wanted: dict[tuple[Gauge, tuple[str, ...]], float] = {}
    if revision:
        for metric, value in ((monitoring or {}).get("live") or {}).items():
            wanted[(LIVE_METRIC, (namespace, model, revision, metric))] = value
        for metric, value in ((monitoring or {}).get("atPromotion") or {}).items():
            wanted[(LIVE_BASELINE_METRIC, (namespace, model, revision, metric))] = value
        if (monitoring or {}).get("inputPsi") is not None:
            wanted[(LIVE_INPUT_PSI, (namespace, model, revision))] = monitoring["inputPsi"]  # type: ignore[index]
    for gauge in (LIVE_METRIC, LIVE_BASELINE_METRIC, LIVE_INPUT_PSI):
        for labels in _series(gauge, namespace, model) - {k[1] for k in wanted if k[0] is gauge}:
            gauge.remove(*labels)
    for (gauge, labels), value in wanted.items():
        gauge.labels(*labels).set(value)


def _series(gauge: Gauge, namespace: str, model: str) -> set[tuple[str, ...]]:
    names = gauge._labelnames  # noqa: SLF001 (the label order of the gauge's own definition)
    return {tuple(sample.labels[n] for n in names) for metric in gauge.collect() for sample in metric.samples
            if sample.labels.get("namespace") == namespace and sample.labels.get("model") == model}


def serve(port: int = DEFAULT_PORT, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose the metrics on http://0.0.0.0:<port>/metrics from a background thread."""
    start_http_server(port, registry=registry)
