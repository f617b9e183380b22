"""kopf handlers of GPTModel: every trigger runs the same level-based pass (reconcile.plan_gptmodel)."""

from __future__ import annotations

from typing import Any

import kopf

from gptops import cluster, metrics
from gptops.api.constants import GROUP, KIND_GPTMODEL, PLURAL_GPTMODEL, VERSION
from gptops.api.gptmodel import GPTModel
from gptops.api.conditions import Reason
from gptops.handlers.common import run_pass
from gptops.handlers.settings import HANDLER_BACKOFF, HANDLER_RETRIES, HANDLER_TIMEOUT, RESYNC_SECONDS
from gptops.reconcile import plan_gptmodel

RESOURCE = (GROUP, VERSION, PLURAL_GPTMODEL)
LIMITS: dict[str, Any] = {"retries": HANDLER_RETRIES, "timeout": HANDLER_TIMEOUT, "backoff": HANDLER_BACKOFF}


@kopf.on.resume(*RESOURCE, id="resume", **LIMITS)
@kopf.on.create(*RESOURCE, id="create", **LIMITS)
@kopf.on.update(*RESOURCE, id="update", **LIMITS)
@kopf.timer(*RESOURCE, id="resync", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Observe the Deployment, plan, roll out or roll back, write status."""
    model, plan = run_pass(KIND_GPTMODEL, body, patch, parse=GPTModel.from_dict,
                           observe=cluster.observe_gptmodel, plan=plan_gptmodel)
    if any(e.reason == Reason.ROLLED_BACK for e in plan.events):
        metrics.ROLLBACKS_TOTAL.inc()
    revision = plan.status["servingRevision"] if "servingArtifact" in plan.status else model.status.serving_revision
    serving = plan.status.get("endpoint") is not None
    metrics.record_serving_revision(model.namespace, model.name, (revision or "source") if serving else None)


@kopf.on.event(*RESOURCE)
def forget(type: str, name: str, namespace: str, **_: Any) -> None:
    """Drop a deleted GPTModel's metric series (no delete handler: it would add a finalizer)."""
    if type == "DELETED":
        metrics.record_serving_revision(namespace, name, None)
