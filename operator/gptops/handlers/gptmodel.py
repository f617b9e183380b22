"""kopf handlers of GPTModel. They only queue passes (handlers/common.py); every pass is the same level-based one
(reconcile.plan_gptmodel), woken by the GPTModel's watch events that change its spec, its Deployment's, monitor Jobs'
and autoscaler's events, and its FineTuneJobs' events that change what the promotion reads (handlers/finetunejob.py)."""

from __future__ import annotations

import json
from typing import Any

import kopf

from gptops import metrics
from gptops.api.conditions import Reason
from gptops.api.constants import (
    GROUP,
    KIND_FINETUNEJOB,
    KIND_GPTMODEL,
    LABEL_MANAGED_BY,
    LABEL_STAGE,
    MANAGED_BY,
    PLURAL_GPTMODEL,
    STAGE_MONITOR,
    VERSION,
)
from gptops.api.gptmodel import GPTModel
from gptops.handlers import common, indexes
from gptops.reconcile import plan_gptmodel
from gptops.reconcile.observed import deployment_state, job_state
from gptops.reconcile.plan import apply_merge_patch

RESOURCE = (GROUP, VERSION, PLURAL_GPTMODEL)
SEEN = common.Changes()


@kopf.on.event(*RESOURCE)
async def gptmodel_event(type: str | None, name: str, namespace: str, uid: str, body: kopf.Body, **_: Any) -> None:
    """Queue a pass when the GPTModel is new (or first listed) or its spec or deletion changed; queue its
    FineTuneJobs when it appears or its spec changed, and those whose plan reads what it serves when that changed;
    forget a deleted one."""
    common.track(KIND_GPTMODEL, type or "ADDED", namespace, name)
    key = (KIND_GPTMODEL, namespace, name)
    if type == "DELETED":
        metrics.record_serving_revision(namespace, name, None)
        metrics.record_gptmodel_conditions(namespace, name, None)
        metrics.record_live(namespace, name, None)
        SEEN.forget(key)
        indexes.forget_written(PLURAL_GPTMODEL, namespace, name)
        SEEN.forget((KIND_FINETUNEJOB, key))
        return
    meta = body.get("metadata") or {}
    if SEEN.changed(key, (uid, meta.get("generation"), bool(meta.get("deletionTimestamp")))):
        common.enqueue(*key, "own")
    status = body.get("status") or {}
    served = (uid, meta.get("generation"), json.dumps(
        sorted((k, v) for k, v in status.items() if k.startswith(("serving", "previous"))), default=str))
    before = SEEN.swap((KIND_FINETUNEJOB, key), served)
    if before == served:
        return
    if not isinstance(before, tuple) or before[:2] != served[:2]:
        # It appeared (FineTuneJobs may be waiting for it) or its spec changed: every FineTuneJob of it reads that.
        names = indexes.finetunejobs_of(namespace, name)
    else:  # what it serves changed: the FineTuneJobs whose plan reads that
        revisions = {status.get("servingRevision"), status.get("previousRevision")}
        revisions |= {v for k, v in json.loads(before[2]) if k in ("servingRevision", "previousRevision")}
        names = indexes.finetunejobs_reading_serving(namespace, name, {r for r in revisions if r})
    for ftj in names:
        common.enqueue(KIND_FINETUNEJOB, namespace, ftj, "gptmodel")


@kopf.on.event("apps", "v1", "deployments", labels=indexes.MODEL_CHILDREN)
async def deployment_event(body: kopf.Body, type: str | None, uid: str, **_: Any) -> None:
    """The vLLM Deployment moved (rolled out, stalled, lost Pods, deleted): queue its GPTModel."""
    if type == "DELETED":
        SEEN.forget(uid)
        common.enqueue_owner(KIND_GPTMODEL, body, "deployment")
    elif SEEN.changed(uid, deployment_state(body)):
        common.enqueue_owner(KIND_GPTMODEL, body, "deployment")


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_STAGE: STAGE_MONITOR})
async def monitor_job_event(body: kopf.Body, type: str | None, uid: str, **_: Any) -> None:
    """A monitor Job moved (finished, failed, deleted): queue its GPTModel, which reads the result."""
    if type == "DELETED":
        SEEN.forget(uid)
        common.enqueue_owner(KIND_GPTMODEL, body, "monitor-job")
    elif SEEN.changed(uid, job_state(body)):
        common.enqueue_owner(KIND_GPTMODEL, body, "monitor-job")


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=indexes.MODEL_CHILDREN)
async def autoscaler_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """The GPTModel's autoscaler was deleted (by hand): queue its GPTModel, which makes it again."""
    if type == "DELETED":
        common.enqueue_owner(KIND_GPTMODEL, body, "autoscaler")


def one_pass(namespace: str, name: str) -> None:
    """One pass over a GPTModel: observe its Deployment and FineTuneJobs, plan, roll out or back, write status."""
    done = common.run_pass(KIND_GPTMODEL, namespace, name, parse=GPTModel.from_dict,
                           observe=indexes.observe_gptmodel, plan=plan_gptmodel)
    if done is None:
        return
    model, plan = done
    rolled_back = any(e.reason == Reason.ROLLED_BACK for e in plan.events)
    ns = model.namespace
    if rolled_back:
        metrics.ROLLBACKS_TOTAL.labels(namespace=ns, model=model.name).inc()
    metrics.PROMOTIONS_TOTAL.labels(namespace=ns, model=model.name).inc(
        sum(e.reason == Reason.PROMOTED for e in plan.events))
    metrics.record_gptmodel_conditions(ns, model.name, {c["type"]: c["status"] == "True"
                                                        for c in plan.status.get("conditions") or ()})
    if "monitoring" in plan.status:  # what the pass wrote: the last run's series, and a run read for the first time
        monitoring = apply_merge_patch(model.status.monitoring.to_dict() if model.status.monitoring else {},
                             plan.status.get("monitoring"))
        metrics.record_live(ns, model.name, monitoring)
        run = (monitoring or {}).get("lastRun") or {}
        before = model.status.monitoring.last_run if model.status.monitoring else None
        if run.get("job") and run.get("job") != (before.job if before else None):
            metrics.LIVE_RUNS_TOTAL.labels(namespace=ns, model=model.name, result=run.get("result", "error")).inc()
    revision = plan.status["servingRevision"] if "servingArtifact" in plan.status else model.status.serving_revision
    serving = plan.status.get("endpoint") is not None
    metrics.record_serving_revision(model.namespace, model.name, (revision or "source") if serving else None)



common.register(KIND_GPTMODEL, PLURAL_GPTMODEL, one_pass)
