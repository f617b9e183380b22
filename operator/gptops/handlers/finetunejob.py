"""kopf handlers of FineTuneJob: every trigger runs the same level-based pass (reconcile.plan_finetunejob)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf

from gptops import cluster, metrics
from gptops.api.constants import GROUP, KIND_FINETUNEJOB, PLURAL_FINETUNEJOB, STAGES, VERSION
from gptops.api.finetunejob import FineTuneJob
from gptops.handlers.common import run_pass
from gptops.handlers.settings import HANDLER_BACKOFF, HANDLER_RETRIES, HANDLER_TIMEOUT, RESYNC_SECONDS
from gptops.reconcile import PromoteRevision, plan_finetunejob

RESOURCE = (GROUP, VERSION, PLURAL_FINETUNEJOB)
LIMITS: dict[str, Any] = {"retries": HANDLER_RETRIES, "timeout": HANDLER_TIMEOUT, "backoff": HANDLER_BACKOFF}


@kopf.on.resume(*RESOURCE, id="resume", **LIMITS)
@kopf.on.create(*RESOURCE, id="create", **LIMITS)
@kopf.on.update(*RESOURCE, id="update", **LIMITS)
@kopf.timer(*RESOURCE, id="resync", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Observe the stage Jobs, plan, create what is missing, promote, write status."""
    before = FineTuneJob.from_dict(dict(body)).status.to_dict() if body.get("status") else {}
    ftj, plan = run_pass(KIND_FINETUNEJOB, body, patch, parse=FineTuneJob.from_dict,
                         observe=cluster.observe_finetunejob, plan=plan_finetunejob)
    _record(ftj, before, plan.status, promoted=any(isinstance(a, PromoteRevision) for a in plan.actions))


@kopf.on.event(*RESOURCE)
def forget(type: str, name: str, namespace: str, **_: Any) -> None:
    """Drop a deleted FineTuneJob's metric series (no delete handler: it would add a finalizer)."""
    if type == "DELETED":
        metrics.forget_finetunejob(namespace, name)


def _record(ftj: FineTuneJob, before: dict[str, Any], status: dict[str, Any], *, promoted: bool) -> None:
    metrics.record_finetunejob_phase(ftj.namespace, ftj.name, status.get("phase"))
    if status.get("metrics"):
        metrics.record_evaluation(ftj.namespace, ftj.name, {k: v for k, v in status["metrics"].items()
                                                            if v is not None})
    if promoted:
        metrics.PROMOTIONS_TOTAL.inc()
    for stage in STAGES:
        old = (before.get("stages") or {}).get(stage) or {}
        new = ((status.get("stages") or {}).get(stage)) or {}
        if new.get("completionTime") and not old.get("completionTime") and new.get("startTime"):
            seconds = (_time(new["completionTime"]) - _time(new["startTime"])).total_seconds()
            metrics.STAGE_DURATION_SECONDS.labels(stage=stage).observe(max(seconds, 0.0))


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
