"""kopf handlers of GPTModel. Every trigger runs the same level-based pass (reconcile.plan_gptmodel): the object's
own create/update/resume, the watch events of its Deployment, and promotions (woken by the FineTuneJob pass)."""

from __future__ import annotations

from typing import Any

import kopf

from gptops import cluster, metrics
from gptops.api.conditions import Reason
from gptops.api.constants import (
    GROUP,
    KIND_FINETUNEJOB,
    KIND_GPTMODEL,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_STAGE,
    MANAGED_BY,
    PLURAL_GPTMODEL,
    STAGE_MONITOR,
    VERSION,
)
from gptops.api.gptmodel import GPTModel
from gptops.handlers import common
from gptops.handlers.settings import HANDLER_LIMITS
from gptops.reconcile import plan_gptmodel

RESOURCE = (GROUP, VERSION, PLURAL_GPTMODEL)
CHILDREN = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODEL: kopf.PRESENT}


@kopf.on.resume(*RESOURCE, id="resume", **HANDLER_LIMITS)
@kopf.on.create(*RESOURCE, id="create", **HANDLER_LIMITS)
@kopf.on.update(*RESOURCE, id="update", **HANDLER_LIMITS)
def reconcile(name: str, namespace: str, reason: str, **_: Any) -> None:
    """Observe the Deployment, plan, roll out or roll back, write status."""
    follow = one_pass(namespace, name)
    if reason in ("create", "resume"):  # FineTuneJobs may be waiting for this GPTModel to exist
        follow += [(KIND_FINETUNEJOB, namespace, n) for n in cluster.finetunejobs_of(namespace, name)]
    common.wake_all(follow)


@kopf.on.event(*RESOURCE)
def tracked(type: str, name: str, namespace: str, **_: Any) -> None:
    """Keep the resync loop's list current; drop a deleted GPTModel's metric series."""
    common.track(KIND_GPTMODEL, type, namespace, name)
    if type == "DELETED":
        metrics.record_serving_revision(namespace, name, None)
        metrics.record_gptmodel_conditions(namespace, name, None)
        metrics.record_live(namespace, name, None)


@kopf.on.event("apps", "v1", "deployments", labels=CHILDREN)
def deployment_changed(body: kopf.Body, type: str, **_: Any) -> None:
    """The vLLM Deployment moved (rolled out, stalled, lost Pods): reconcile its GPTModel."""
    if type != "DELETED":
        common.wake_owner(KIND_GPTMODEL, body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_STAGE: STAGE_MONITOR})
def monitor_job_changed(body: kopf.Body, type: str, **_: Any) -> None:
    """A monitor Job moved (finished, failed): reconcile its GPTModel, which reads the result."""
    if type != "DELETED":
        common.wake_owner(KIND_GPTMODEL, body)


def one_pass(namespace: str, name: str) -> list[common.Key]:
    """One pass; when the served revision changed (promotion, pin, rollback), wakes the GPTModel's FineTuneJobs:
    their Promoted condition follows what it serves."""
    done = common.run_pass(KIND_GPTMODEL, namespace, name, parse=GPTModel.from_dict,
                           observe=cluster.observe_gptmodel, plan=plan_gptmodel)
    if done is None:
        return []
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
        monitoring = _merged(model.status.monitoring.to_dict() if model.status.monitoring else {},
                             plan.status.get("monitoring"))
        metrics.record_live(ns, model.name, monitoring)
        run = (monitoring or {}).get("lastRun") or {}
        before = model.status.monitoring.last_run if model.status.monitoring else None
        if run.get("job") and run.get("job") != (before.job if before else None):
            metrics.LIVE_RUNS_TOTAL.labels(namespace=ns, model=model.name, result=run.get("result", "error")).inc()
    revision = plan.status["servingRevision"] if "servingArtifact" in plan.status else model.status.serving_revision
    serving = plan.status.get("endpoint") is not None
    metrics.record_serving_revision(model.namespace, model.name, (revision or "source") if serving else None)
    if "servingArtifact" in plan.status:
        return [(KIND_FINETUNEJOB, model.namespace, n) for n in cluster.finetunejobs_of(model.namespace, model.name)]
    return []


def _merged(old: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any] | None:
    """`old` with a JSON merge patch applied (what the status is after the pass wrote it)."""
    if patch is None:
        return None
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


common.register(KIND_GPTMODEL, PLURAL_GPTMODEL, one_pass)
