"""kopf handlers of FineTuneJob. Every trigger runs the same level-based pass (reconcile.plan_finetunejob): the
object's own create/update/resume, and the watch events of its stage Jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf

from gptops import cluster, metrics
from gptops.api.constants import (
    GROUP,
    KIND_FINETUNEJOB,
    KIND_GPTMODEL,
    LABEL_FINETUNEJOB,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL_FINETUNEJOB,
    STAGES,
    VERSION,
)
from gptops.api.conditions import FAILED, TRUE
from gptops.api.finetunejob import FineTuneJob
from gptops.handlers import common
from gptops.handlers.settings import HANDLER_LIMITS
from gptops.reconcile import plan_finetunejob
from gptops.reconcile.finetunejob import STAGE_CONDITION

RESOURCE = (GROUP, VERSION, PLURAL_FINETUNEJOB)
CHILDREN = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_FINETUNEJOB: kopf.PRESENT}


@kopf.on.resume(*RESOURCE, id="resume", **HANDLER_LIMITS)
@kopf.on.create(*RESOURCE, id="create", **HANDLER_LIMITS)
@kopf.on.update(*RESOURCE, id="update", **HANDLER_LIMITS)
def reconcile(name: str, namespace: str, **_: Any) -> None:
    """Observe the stage Jobs, plan, create what is missing, promote, write status."""
    common.wake_all(one_pass(namespace, name))


@kopf.on.event(*RESOURCE)
def tracked(type: str, name: str, namespace: str, uid: str, **_: Any) -> None:
    """Keep the resync loop's list current; drop a deleted FineTuneJob's metric series."""
    common.track(KIND_FINETUNEJOB, type, namespace, name)
    if type == "DELETED":
        metrics.forget_finetunejob(namespace, name, uid)


@kopf.on.event("batch", "v1", "jobs", labels=CHILDREN)
def stage_job_changed(body: kopf.Body, type: str, **_: Any) -> None:
    """A stage Job moved: reconcile its FineTuneJob."""
    if type != "DELETED":
        common.wake_owner(KIND_FINETUNEJOB, body)


@kopf.on.event("", "v1", "pods", labels=CHILDREN)
def stage_pod_changed(body: kopf.Body, type: str, **_: Any) -> None:
    """A stage Pod moved without its Job (unschedulable, pulling its image, an attempt failed): reconcile its
    FineTuneJob now, so the cause reaches its condition in one pass."""
    if type != "DELETED":
        common.wake_labelled(KIND_FINETUNEJOB, body, LABEL_FINETUNEJOB)


def one_pass(namespace: str, name: str) -> list[common.Key]:
    """One pass; returns what to wake next: the GPTModel when a condition moved (a passed gate is a promotion
    candidate; the GPTModel's own pass decides, as the only writer of its status)."""
    done = common.run_pass(KIND_FINETUNEJOB, namespace, name, parse=FineTuneJob.from_dict,
                           observe=cluster.observe_finetunejob, plan=plan_finetunejob)
    if done is None:
        return []
    ftj, plan = done
    _record(ftj, ftj.status.to_dict(), plan.status)
    return [(KIND_GPTMODEL, ftj.namespace, ftj.spec.model.name)] if plan.events else []


def _record(ftj: FineTuneJob, before: dict[str, Any], status: dict[str, Any]) -> None:
    metrics.record_finetunejob_phase(ftj.namespace, ftj.name, status.get("phase"), ftj.metadata.uid)
    numbers = {k: v for k, v in (status.get("metrics") or {}).items() if v is not None}
    metrics.record_evaluation(ftj.namespace, ftj.name, numbers)
    failed = next((c for c in status.get("conditions") or () if c["type"] == FAILED and c["status"] == TRUE), None)
    was = next((c for c in before.get("conditions") or () if c["type"] == FAILED), {})
    if failed is not None and was.get("status") != TRUE:
        stage_of = {cond: stage for stage, cond in STAGE_CONDITION.items()}
        stage = next((stage_of[c["type"]] for c in status["conditions"] if c["type"] in stage_of
                      and c.get("reason") == failed.get("reason") and not c.get("message", "").startswith("not run")),
                     "spec")
        metrics.STAGE_FAILURES_TOTAL.labels(stage=stage, reason=failed.get("reason", "")).inc()
    for stage in STAGES:
        old = (before.get("stages") or {}).get(stage) or {}
        new = (status.get("stages") or {}).get(stage) or {}
        if new.get("completionTime") and not old.get("completionTime") and new.get("startTime"):
            seconds = (_time(new["completionTime"]) - _time(new["startTime"])).total_seconds()
            metrics.STAGE_DURATION_SECONDS.labels(stage=stage).observe(max(seconds, 0.0))


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


common.register(KIND_FINETUNEJOB, PLURAL_FINETUNEJOB, one_pass)
