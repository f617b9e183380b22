"""plan_finetunejob: prepare -> train -> evaluate -> gate -> promotion, decided from what exists. Pure: no I/O,
no kopf or kubernetes; the builders make the manifests. Never branches on status.phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptops.api.artifacts import (
    base_served_revision,
    served_revision_for,
    served_revision_from_status,
    serving_status,
    source_model_location,
)
from gptops.api.conditions import (
    EVALUATED,
    FAILED,
    FALSE,
    PASSED,
    PREPARED,
    PROMOTED,
    TRAINED,
    TRUE,
    UNKNOWN,
    Condition,
    Reason,
)
from gptops.api.constants import STAGES
from gptops.api.finetunejob import FineTuneJob, RunArtifacts, StageStatus
from gptops.api.gptmodel import GPTModel
from gptops.api.stageresult import StageResult, parse_stage_result
from gptops.builders import BuildError, build_stage_children, stage_job_name
from gptops.builders.job import is_multinode
from gptops.reconcile.gate import decide
from gptops.reconcile.conditions import Want, rebuild, transition_events
from gptops.reconcile.observed import JobState, ObservedFineTuneJob
from gptops.reconcile.plan import Action, CreateChild, EmitEvent, Plan, PromoteRevision, merge_patch_from

STAGE_CONDITION = {"prepare": PREPARED, "train": TRAINED, "evaluate": EVALUATED}
#: A Pod's message goes into a condition message; keep conditions readable.
MESSAGE_MAX = 1024


@dataclass
class _Stage:
    """What one stage amounts to in this pass."""

    want: Want
    done: bool = False
    failed: Want | None = None
    result: StageResult | None = None
    status: dict[str, Any] | None = None


def plan_finetunejob(ftj: FineTuneJob, observed: ObservedFineTuneJob) -> Plan:
    """The actions and the status of one level-based pass over a FineTuneJob."""
    gen = ftj.metadata.generation
    model = observed.model
    actions: list[Action] = []
    status: dict[str, Any] = {"observedGeneration": gen}
    wants: list[Want] = []
    failed: Want | None = None
    results: dict[str, StageResult] = {}
    stages_status: dict[str, Any] = {}
    base_model = ftj.status.artifacts.base_model

    blocked: Want | None = None
    start_model: str | None = None
    if model is None:
        blocked = Want(PREPARED, FALSE, Reason.MODEL_NOT_FOUND,
                       f"GPTModel {ftj.spec.model.name} not found in namespace {ftj.namespace}")
    elif base_model and stage_job_name(ftj, STAGES[0], gen) in observed.jobs:
        # The run started from base_model; later stages keep it even if the GPTModel serves something else now.
        start_model = None if base_model == source_model_location(model) else base_model
    else:
        start_model, base_model, waiting = _start_model(ftj, model)
        if waiting:
            blocked = Want(PREPARED, FALSE, Reason.WAITING, waiting)

    previous_done = True
    for stage in STAGES:
        cond_type = STAGE_CONDITION[stage]
        if failed is not None or not previous_done:
            prev = STAGES[STAGES.index(stage) - 1]
            wants.append(Want(cond_type, FALSE, Reason.WAITING, f"waiting for the {prev} stage"))
            previous_done = False
            continue
        name = stage_job_name(ftj, stage, gen)
        job = observed.jobs.get(name)
        if job is None and blocked is not None:  # what exists is still read; nothing new is started
            wants.append(Want(cond_type, FALSE, blocked.reason, blocked.message))
            previous_done = False
            continue
        outcome = _stage_outcome(stage, name, job, recorded=getattr(ftj.status.stages, stage))
        if model is not None and (job is None or (is_multinode(ftj, stage) and not (outcome.done or outcome.failed))):
            try:
                children = build_stage_children(ftj, model, stage, generation=gen, start_model=start_model)
            except BuildError as err:
                failed = Want(FAILED, TRUE, Reason.INVALID_SPEC, str(err))
                wants.append(Want(cond_type, FALSE, Reason.INVALID_SPEC, str(err)))
                previous_done = False
                continue
            for child in children:
                if _exists(child, observed):
                    continue
                actions.append(CreateChild(child))
                actions.append(EmitEvent("Normal", Reason.JOB_CREATED,
                                         f"Created {child['kind']} {child['metadata']['name']} for the {stage} stage"))
        wants.append(outcome.want)
        if outcome.status:
            stages_status[stage] = outcome.status
        if outcome.result is not None:
            results[stage] = outcome.result
        if outcome.failed is not None:
            failed = outcome.failed
        previous_done = outcome.done

    artifacts = _artifacts(ftj, results, base_model)
    evaluation = results.get("evaluate") if previous_done else None
    metrics = dict(evaluation.metrics) if evaluation else {}
    passed_want, promoted_want, promotion = _gate_and_promotion(ftj, model, observed, evaluation, artifacts)
    if promotion is not None:
        actions.append(promotion)
        actions.append(EmitEvent("Normal", Reason.PROMOTED, promotion_message(ftj, promotion)))
    wants += [passed_want, promoted_want, failed or Want(FAILED, FALSE, Reason.AS_EXPECTED, "no stage failed")]

    conditions = rebuild(ftj.status.conditions, wants, generation=gen, now=observed.now)
    # A promotion has its own event, which names the revision it replaced.
    actions += [e for e in transition_events(ftj.status.conditions, conditions, warn_when_true=(FAILED,),
                                             warn_when_false=(PASSED,))
                if promotion is None or not e.message.startswith(f"{PROMOTED}=")]
    status.update(
        phase=derive_phase(conditions, started=bool(stages_status)),
        stages=stages_status,
        metrics=metrics,
        artifacts=artifacts.to_dict(),
        lineage=_lineage(results, artifacts, model, promoted_want),
        conditions=[c.to_dict() for c in conditions],
    )
    return Plan(actions=tuple(actions), status=merge_patch_from(ftj.status.to_dict(), status))


def _start_model(ftj: FineTuneJob, model: GPTModel) -> tuple[str | None, str | None, str | None]:
    """(start_model for the builders, the base the run starts from, why it must wait)."""
    served = served_revision_from_status(model)
    mode = ftj.spec.start_from
    if mode == "auto":
        mode = "serving" if served is not None else "source"
    if mode == "serving":
        if served is None:
            return None, None, (f"startFrom: serving, but GPTModel {model.name} serves no fine-tuned revision yet")
        # A LoRA revision starts from its adapter: the train stage merges it into its base first.
        start = served.adapter or served.model
        return start, start, None
    return None, source_model_location(model), None


def _exists(child: dict[str, Any], observed: ObservedFineTuneJob) -> bool:
    name = child["metadata"]["name"]
    if child["kind"] == "Job":
        return name in observed.jobs
    return name in observed.services


def _stage_outcome(stage: str, name: str, job: JobState | None, recorded: StageStatus | None = None) -> _Stage:
    cond_type = STAGE_CONDITION[stage]
    if job is None:
        return _Stage(Want(cond_type, FALSE, Reason.JOB_CREATED, f"created Job {name}"), status={"jobName": name})
    timing = {"jobName": name, "startTime": job.start_time, "completionTime": job.completion_time}
    timing = {k: v for k, v in timing.items() if v is not None}
    pod = job.result_pod()
    raw = pod.message if pod else ""
    result = parse_stage_result(raw, stage=stage)
    if (result is None and pod is None and job.complete and recorded is not None and recorded.job_name == name
            and recorded.completion_time == job.completion_time):
        # The completed Job's Pods are gone (a lost node, the Pod garbage collector): keep the result an earlier
        # pass read from them after the Job completed, rather than forget the stage's outcome.
        result = recorded.result
    if result is not None:
        timing["result"] = result.to_dict()
    failed_cond = job.failed_condition
    if failed_cond is not None or (job.complete and result is not None and not result.ok):
        why = (f"{failed_cond.get('reason', 'Failed')}: {failed_cond.get('message', '')}".rstrip(": ")
               if failed_cond is not None else "the stage reported ok=false")
        told = result.message if result is not None else raw.strip()
        message = _cut(f"{stage} Job {name} failed ({why})" + (f": {told}" if told else ""))
        reason = Reason.STAGE_FAILED if result is not None and not result.ok else Reason.JOB_FAILED
        return _Stage(Want(cond_type, FALSE, reason, message), failed=Want(FAILED, TRUE, reason, message),
                      result=result, status=timing)
    if job.complete:
        message = result.message if result is not None and result.message else f"Job {name} succeeded"
        return _Stage(Want(cond_type, TRUE, Reason.JOB_SUCCEEDED, _cut(message)), done=True, result=result,
                      status=timing)
    return _Stage(Want(cond_type, FALSE, Reason.JOB_RUNNING, f"Job {name} is running ({job.active} active Pods)"),
                  status=timing)


def _artifacts(ftj: FineTuneJob, results: dict[str, StageResult], base_model: str | None) -> RunArtifacts:
    known = set(RunArtifacts.model_fields) | {f.alias for f in RunArtifacts.model_fields.values() if f.alias}
    merged: dict[str, Any] = {"baseModel": base_model} if base_model else {}
    for stage in STAGES:
        if stage in results:
            merged.update({k: v for k, v in results[stage].artifacts.items() if k in known})
    return RunArtifacts.model_validate(merged)


def _gate_and_promotion(
    ftj: FineTuneJob, model: GPTModel | None, observed: ObservedFineTuneJob, evaluation: StageResult | None,
    artifacts: RunArtifacts,
) -> tuple[Want, Want, PromoteRevision | None]:
    promote = ftj.spec.evaluation.promote
    if evaluation is None:
        wait = Want(PASSED, UNKNOWN, Reason.WAITING, "waiting for the evaluate stage")
        if not promote:
            return wait, Want(PROMOTED, FALSE, Reason.PROMOTION_NOT_REQUESTED, "spec.evaluation.promote is false"), None
        return wait, Want(PROMOTED, UNKNOWN, Reason.WAITING, "waiting for the gate"), None
    decision = decide(ftj.spec.evaluation.thresholds.to_dict(), evaluation.metrics)
    # Every number in the message, the checks that held too: a rejection should show how close it came.
    numbers = "; ".join(c.message for c in decision.checks) or decision.message
    passed = Want(PASSED, TRUE if decision.passed else FALSE, decision.reason, numbers)
    if not decision.passed:
        return passed, Want(PROMOTED, FALSE, decision.reason, "not promoted: the gate did not pass"), None
    if not promote:
        return passed, Want(PROMOTED, FALSE, Reason.PROMOTION_NOT_REQUESTED, "spec.evaluation.promote is false"), None
    before = next((c for c in ftj.status.conditions if c.type == PROMOTED), None)
    already = before is not None and before.status == TRUE
    if model is None:
        if already:
            return passed, Want(PROMOTED, TRUE, Reason.SUPERSEDED, f"GPTModel {ftj.spec.model.name} is gone"), None
        return passed, Want(PROMOTED, FALSE, Reason.MODEL_NOT_FOUND, f"GPTModel {ftj.spec.model.name} not found"), None
    serving = model.status.serving_revision
    promoted = Want(PROMOTED, TRUE, Reason.PROMOTED, f"promoted into GPTModel {model.name}")
    if serving == ftj.name:
        return passed, promoted, None
    if already:
        # Promotion happens once; a later promotion or rollback replaced it.
        return passed, Want(PROMOTED, TRUE, Reason.SUPERSEDED,
                            f"GPTModel {model.name} now serves {serving or 'its source'}"), None
    done = ftj.model_copy(update={"status": ftj.status.model_copy(update={"artifacts": artifacts})})
    new = served_revision_for(done, model)
    current = served_revision_from_status(model) or base_served_revision(model)
    patch = serving_status(new, current)
    return passed, promoted, PromoteRevision(model=model.name, finetunejob=ftj.name, status=patch,
                                             resource_version=observed.model_resource_version)


def promotion_message(ftj: FineTuneJob, promotion: PromoteRevision) -> str:
    """The event text of a promotion: what is served now and what was before."""
    before = promotion.status.get("previousRevision") or "its source"
    return f"Promoted {ftj.name} into GPTModel {promotion.model} (previous revision: {before})"


def _lineage(results: dict[str, StageResult], artifacts: RunArtifacts, model: GPTModel | None,
             promoted: Want) -> dict[str, Any]:
    prepare, evaluation = results.get("prepare"), results.get("evaluate")
    lineage = {
        "datasetDigest": prepare.digest if prepare else None,
        "checkpoint": artifacts.checkpoint or artifacts.model or artifacts.adapter,
        "evaluation": (evaluation.artifacts.get("report") or evaluation.digest) if evaluation else None,
        "servedBy": model.name if model is not None and promoted.status == TRUE
        and promoted.reason == Reason.PROMOTED else None,
    }
    return {k: v for k, v in lineage.items() if v is not None}


def derive_phase(conditions: list[Condition], *, started: bool) -> str:
    """The printer column: a summary of the conditions, for people (no code branches on it)."""
    status = {c.type: (c.status, c.reason) for c in conditions}
    if status.get(FAILED, ("",))[0] == TRUE:
        return "Failed"
    if status.get(PROMOTED, ("",))[0] == TRUE:
        return "Promoted"
    passed = status.get(PASSED, ("",))[0]
    if passed == TRUE:
        return "Passed"
    if passed == FALSE:
        return "Rejected"
    if status.get(TRAINED, ("",))[0] == TRUE:
        return "Evaluating"
    if status.get(PREPARED, ("",))[0] == TRUE:
        return "Training"
    return "Preparing" if started else "Pending"


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 12] + " [truncated]"
