"""kopf handlers of FineTuneJob. They only queue passes (handlers/common.py); every pass is the same level-based one
(reconcile.plan_finetunejob), woken by the FineTuneJob's watch events that change its spec, and by its stage Jobs' and
Pods' events that change what the pass reads."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import kopf

from gptops import metrics
from gptops.api.conditions import FAILED, PASSED, TRUE
from gptops.api.constants import (
    ANNOTATION_APPROVED,
    ANNOTATION_APPROVED_REVISION,
    GROUP,
    KIND_FINETUNEJOB,
    KIND_GPTMODEL,
    LABEL_FINETUNEJOB,
    PLURAL_FINETUNEJOB,
    STAGES,
    VERSION,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.handlers import common, indexes
from gptops.reconcile import plan_finetunejob
from gptops.reconcile.finetunejob import STAGE_CONDITION
from gptops.reconcile.observed import job_state, pod_state

RESOURCE = (GROUP, VERSION, PLURAL_FINETUNEJOB)
SEEN = common.Changes()


@kopf.on.event(*RESOURCE)
async def finetunejob_event(type: str | None, name: str, namespace: str, uid: str, body: kopf.Body,
                            **_: Any) -> None:
    """Queue a pass when the FineTuneJob is new (or first listed), its spec or deletion changed, or a person approved
    or rejected it; and its GPTModel's pass when what the promotion reads changed (the gate, a failure, the weights,
    the approval); forget a deleted one."""
    common.track(KIND_FINETUNEJOB, type or "ADDED", namespace, name)
    model = ((body.get("spec") or {}).get("model") or {}).get("name", "")
    key = (KIND_FINETUNEJOB, namespace, name)
    if type == "DELETED":
        metrics.forget_finetunejob(namespace, name, uid)
        SEEN.forget(key)
        indexes.forget_written(PLURAL_FINETUNEJOB, namespace, name)
        SEEN.forget((KIND_GPTMODEL, key))
        indexes.forget_created(namespace, name)
        if model:
            common.enqueue(KIND_GPTMODEL, namespace, model, "finetunejob")
        return
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    decision = (annotations.get(ANNOTATION_APPROVED), annotations.get(ANNOTATION_APPROVED_REVISION))  # a person's
    if SEEN.changed(key, (uid, meta.get("generation"), bool(meta.get("deletionTimestamp")), decision)):
        common.enqueue(*key, "own")
    status = body.get("status") or {}
    gate = [c for c in status.get("conditions") or () if c.get("type") in (PASSED, FAILED)]
    # The weights matter to the GPTModel once the run passed (they are what it would serve); before, each stage's
    # outputs change nothing it decides.
    passed = any(c.get("type") == PASSED and c.get("status") == TRUE for c in gate)
    promotion = json.dumps([meta.get("generation"), status.get("observedGeneration"),
                            status.get("artifacts") if passed else None, status.get("approval"), gate],
                           sort_keys=True)
    if model and SEEN.changed((KIND_GPTMODEL, key), promotion):
        common.enqueue(KIND_GPTMODEL, namespace, model, "finetunejob")


@kopf.on.event("batch", "v1", "jobs", labels=indexes.FTJ_CHILDREN)
async def stage_job_event(body: kopf.Body, type: str | None, uid: str, **_: Any) -> None:
    """A stage Job moved in a way its FineTuneJob's plan reads: queue the FineTuneJob."""
    if type == "DELETED":  # deleted to retry its stage, or by a new revision: the pass decides
        SEEN.forget(uid)
        common.enqueue_owner(KIND_FINETUNEJOB, body, "job")
    elif SEEN.changed(uid, job_state(body).plan_inputs()):
        common.enqueue_owner(KIND_FINETUNEJOB, body, "job")


@kopf.on.event("", "v1", "pods", labels=indexes.FTJ_CHILDREN)
async def stage_pod_event(body: kopf.Body, type: str | None, uid: str, **_: Any) -> None:
    """A stage Pod moved without its Job (unschedulable, pulling its image, an attempt failed, its result written):
    queue its FineTuneJob, so the cause reaches its condition in one pass. Being scheduled, started or ready
    changes no plan, and wakes nothing; nor does a new Pod with nothing to say yet."""
    if type == "DELETED":
        SEEN.forget(uid)
        return
    state = pod_state(body)
    before = SEEN.swap(uid, state.plan_inputs())
    if before != state.plan_inputs() and not (before is common.MISSING and state.quiet):
        common.enqueue_labelled(KIND_FINETUNEJOB, body, LABEL_FINETUNEJOB, "pod")


def one_pass(namespace: str, name: str) -> None:
    """One pass over a FineTuneJob: observe its stage Jobs, plan, create what is missing, write status."""
    done = common.run_pass(KIND_FINETUNEJOB, namespace, name, parse=FineTuneJob.from_dict,
                           observe=indexes.observe_finetunejob, plan=plan_finetunejob)
    if done is not None:
        ftj, plan = done
        _record(ftj, ftj.status.to_dict(), plan.status)


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
