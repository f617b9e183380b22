"""The live-evaluation decisions of a GPTModel pass (spec.monitoring): when to run the next monitor Job, what its
result says against the numbers the served revision was promoted with (`judge`, shared with `gptops monitor`), the
`Drifted` condition, status.monitoring, and whether to roll back. Pure: no I/O, no kopf or kubernetes.

Schedule: the runs of a revision are numbered by the intervals since it passed its gate (servingPassedAt; the
the Unix epoch for its source), and run n is the Job `<gm>-monitor-<revision key>-<n>`. A pass (any trigger,
the periodic resync included) creates the current interval's Job once the revision is rolled out, unless it exists;
so a run starts at most one resync period after its interval begins, and never twice.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from gptops.api.artifacts import ServedRevision, revision_key_of
from gptops.api.conditions import DRIFTED, FALSE, TRUE, UNKNOWN, Reason, parse_rfc3339
from gptops.api.constants import STAGE_MONITOR
from gptops.api.gptmodel import GPTModel, Monitoring
from gptops.api.stageresult import parse_stage_result
from gptops.builders.common import BuildError
from gptops.builders.monitor import build_monitor_job, monitor_job_name
from gptops.reconcile.conditions import Want
from gptops.reconcile.observed import JobState, ObservedGPTModel
from gptops.reconcile.plan import Action, CreateChild, DeleteChild, merge_patch_from

#: The rollback reason of a drift starts with this (the Degraded message says "revision X <reason>").
DRIFT_ROLLBACK_PREFIX = "drifted in live evaluation"
#: Finished monitor Jobs kept (the newest); older ones are deleted.
KEEP_FINISHED = 2
#: Higher is worse for these metrics; lower is worse for the others (bleu).
HIGHER_IS_WORSE = frozenset({"perplexity"})


@dataclass(frozen=True)
class Verdict:
    """What a run's numbers say against the promotion-time ones."""

    drifted: bool
    change: dict[str, float]
    """Relative change of each live value against its promotion value, (live - atPromotion) / atPromotion."""
    reasons: list[str]
    """What drifted, in words (empty when nothing did)."""
    summary: str
    """Every number, for a condition message or a terminal."""


def judge(live: dict[str, float], at_promotion: dict[str, float], *, tolerance: float,
          psi: float | None = None, psi_threshold: float | None = None) -> Verdict:
    """A metric drifted when it is worse than its promotion value by more than `tolerance` (relative: perplexity
    above (1 + tolerance) x, BLEU below (1 - tolerance) x); the input drifted when the PSI is above its threshold.
    A metric without a promotion value (or a live one) is reported, never judged."""
    change: dict[str, float] = {}
    reasons: list[str] = []
    parts: list[str] = []
    for metric in sorted(live):
        value, base = live[metric], at_promotion.get(metric)
        if base is None or base == 0:
            parts.append(f"{metric} {value:.4g} (no value at promotion)")
            continue
        rel = (value - base) / abs(base)
        change[metric] = round(rel, 4)
        worse = rel if metric in HIGHER_IS_WORSE else -rel
        parts.append(f"{metric} {value:.4g} vs {base:.4g} at promotion ({rel:+.1%})")
        if worse > tolerance:
            reasons.append(f"{metric} {value:.4g} is {worse:.1%} worse than {base:.4g} at promotion "
                           f"(tolerance {tolerance:.0%})")
    if psi is not None:
        parts.append(f"input PSI {psi:.3g}" + (f" (threshold {psi_threshold:g})" if psi_threshold else ""))
        if psi_threshold is not None and psi > psi_threshold:
            reasons.append(f"input PSI {psi:.3g} is above {psi_threshold:g}: live prompt lengths moved away from "
                           "the dataset's")
    return Verdict(bool(reasons), change, reasons, "; ".join(parts) or "nothing measured")


@dataclass
class MonitoringDecision:
    """What the monitoring part of a GPTModel pass decided."""

    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] | None = None
    """status.monitoring, whole (keys that went away are None, for the merge patch); None: leave it out."""
    drifted: Want | None = None
    """The Drifted condition; None without spec.monitoring."""
    rollback: str | None = None
    """Why to roll back the served revision (action rollback, a drift of it); None: keep serving it."""


def plan_monitoring(model: GPTModel, observed: ObservedGPTModel, served: ServedRevision | None, *,
                    rolled_out: bool) -> MonitoringDecision:
    """The monitoring decisions for the revision `served` (rolled out or not)."""
    spec = model.spec.monitoring
    previous = model.status.monitoring.to_dict() if model.status.monitoring else None
    if spec is None or served is None:
        return MonitoringDecision(status=None,
                                  actions=[DeleteChild("Job", j.name, model.namespace) for j in observed.monitor_jobs])
    revision = served.revision or "source"
    key = revision_key_of(served.adapter or served.model) or "source"
    at_promotion = _at_promotion(observed, served, spec)
    mine = [j for j in observed.monitor_jobs if j.revision_key == key]
    finished = [j for j in mine if j.complete or j.failed_condition is not None]
    latest = max(finished, key=lambda j: (j.completion_time or j.created, j.name), default=None)

    decision = MonitoringDecision()
    if latest is None:
        last = (previous or {}).get("lastRun") or {}
        before = f"; the last run ({last['job']}) evaluated revision {last.get('revision')}: " \
                 f"{last.get('result')}" if last.get("job") else ""
        decision.drifted = Want(DRIFTED, UNKNOWN, Reason.NOT_YET_RUN,
                                f"revision {revision} has not been evaluated live yet (every "
                                f"{spec.interval_seconds}s once it is rolled out){before}")
        # status.monitoring stays the last finished run, whichever revision it evaluated (lastRun.revision says).
        status: dict[str, Any] = previous or {"atPromotion": at_promotion}
    else:
        status, decision.drifted, verdict = _read_run(latest, revision, at_promotion, spec, observed.now)
        if verdict is not None and verdict.drifted and spec.action == "rollback" and served.revision is not None:
            decision.rollback = f"{DRIFT_ROLLBACK_PREFIX} ({'; '.join(verdict.reasons)})"
    decision.status = _patch(previous, status)

    active = [j for j in observed.monitor_jobs if not (j.complete or j.failed_condition is not None)]
    name = monitor_job_name(model, key, _run_number(model, spec, observed.now))
    if rolled_out and not any(j.name == name for j in observed.monitor_jobs) and not any(
            j.revision_key == key for j in active):
        try:
            decision.actions.append(CreateChild(build_monitor_job(model, served, key, name,
                                                                  metrics_urls=observed.serving_pods)))
        except BuildError as e:  # a spec the cluster cannot run: said, not retried
            decision.drifted = Want(DRIFTED, UNKNOWN, Reason.INVALID_SPEC, f"no monitor Job: {e}")
    keep = {j.name for j in sorted(finished, key=lambda j: (j.created, j.name))[-KEEP_FINISHED:]}
    decision.actions += [DeleteChild("Job", j.name, model.namespace) for j in observed.monitor_jobs
                         if j.name not in keep and (j.revision_key != key or j in finished)]
    return decision


def _at_promotion(observed: ObservedGPTModel, served: ServedRevision, spec: Monitoring) -> dict[str, float]:
    """The served FineTuneJob's evaluation numbers, for the monitored metrics (none for the source)."""
    ftj = observed.finetunejob(served.revision) if served.revision else None
    if ftj is None:
        return {}
    return {m: float(ftj.status.metrics[m]) for m in spec.metrics if m in ftj.status.metrics}


def _read_run(job: JobState, revision: str, at_promotion: dict[str, float], spec: Monitoring,
              now: str) -> tuple[dict[str, Any], Want, Verdict | None]:
    """status.monitoring and the Drifted condition from a finished monitor Job."""
    pod = job.result_pod()
    result = parse_stage_result(pod.message if pod else None, stage=STAGE_MONITOR)
    run = {"job": job.name, "revision": revision, "finishedAt": job.completion_time or now}
    if result is None or not result.ok or job.failed_condition is not None:
        why = (result.message if result is not None else None) or (
            (job.failed_condition or {}).get("message") or f"Job {job.name} left no monitor result")
        run.update(result="error", message=why[:4096])
        return ({"lastRun": run, "atPromotion": at_promotion},
                Want(DRIFTED, UNKNOWN, Reason.MONITOR_FAILED, f"the monitor Job {job.name} failed: {why}"), None)
    live = {m: result.metrics[m] for m in spec.metrics if m in result.metrics}
    psi = result.metrics.get("inputPsi")
    verdict = judge(live, at_promotion, tolerance=spec.tolerance, psi=psi,
                    psi_threshold=spec.input_drift.psi_threshold)
    run.update(result="drifted" if verdict.drifted else "ok", message=result.message[:4096])
    status = {"lastRun": run, "live": live, "atPromotion": at_promotion, "change": verdict.change, "inputPsi": psi}
    if verdict.drifted:
        input_only = all(r.startswith("input PSI") for r in verdict.reasons)
        want = Want(DRIFTED, TRUE, Reason.INPUT_DRIFT if input_only else Reason.METRICS_WORSENED,
                    f"revision {revision}: " + "; ".join(verdict.reasons) + f" ({job.name}: {verdict.summary})")
    else:
        want = Want(DRIFTED, FALSE, Reason.WITHIN_TOLERANCE, f"revision {revision}: {verdict.summary} ({job.name})")
    return status, want, verdict


def _run_number(model: GPTModel, spec: Monitoring, now: str) -> int:
    """Which interval `now` is in, counted from when the served revision passed its gate (the source: from 1970)."""
    start = parse_rfc3339(model.status.serving_passed_at) or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    current = parse_rfc3339(now)
    if current is None:
        return 0
    return max(0, math.floor((current - start).total_seconds() / spec.interval_seconds))


def _patch(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """status.monitoring as a merge patch that makes it exactly `new` (None values dropped; None: remove it)."""
    if new is None:
        return None
    return merge_patch_from(old or {}, {k: v for k, v in new.items() if v is not None})

