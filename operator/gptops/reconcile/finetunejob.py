"""plan_finetunejob: prepare -> train -> evaluate -> gate -> promotion, decided from what exists. Pure: no I/O,
no kopf or kubernetes; the builders make the manifests. Never branches on status.phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptops.api.artifacts import (
    previous_revision_from_status,
    revision_key_of,
    served_revision_for,
    served_revision_from_status,
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
    get_condition,
)
from gptops.api.constants import STAGES
from gptops.api.finetunejob import Approval, FineTuneJob, RunArtifacts, StageStatus
from gptops.api.gptmodel import GPTModel
from gptops.api.revisions import Revision, new_revision, same_revision, spec_key
from gptops.api.stageresult import STAGE_RESULT_API_VERSION, StageResult, parse_stage_result
from gptops.builders import BuildError, build_stage_children, stage_job_name
from gptops.builders.job import is_multinode
from gptops.reconcile.approval import approval_command, decide_approval
from gptops.reconcile.gate import decide
from gptops.reconcile.conditions import Want, rebuild, transition_events
from gptops.reconcile.observed import JobState, ObservedFineTuneJob
from gptops.reconcile.plan import Action, CreateChild, DeleteChild, EmitEvent, Plan, merge_patch_from
from gptops.reconcile.promotion import order

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
    warn: bool = False
    """A Pod-level problem (unschedulable, image pull, a failed attempt): worth a Warning event when it is new."""


def plan_finetunejob(ftj: FineTuneJob, observed: ObservedFineTuneJob) -> Plan:
    """The actions and the status of one level-based pass over a FineTuneJob."""
    gen = ftj.metadata.generation
    model = observed.model
    actions: list[Action] = []
    status: dict[str, Any] = {"observedGeneration": gen}
    wants: list[Want] = []
    failed: Want | None = None
    failed_stage: str | None = None
    problems: list[Want] = []
    results: dict[str, StageResult] = {}
    stages_status: dict[str, Any] = {}

    blocked: Want | None = None
    revision: Revision | None = None
    if model is None:
        blocked = Want(PREPARED, FALSE, Reason.MODEL_NOT_FOUND,
                       f"GPTModel {ftj.spec.model.name} not found in namespace {ftj.namespace}")
        revision = _known_revision(ftj, observed)
    else:
        revision, waiting = _revision(ftj, model, observed)
        if waiting:
            blocked = Want(PREPARED, FALSE, Reason.WAITING, waiting)
    if revision is not None:
        actions += _retire(ftj, model, revision, observed)

    previous_done = True
    for stage in STAGES:
        cond_type = STAGE_CONDITION[stage]
        if failed is not None:
            wants.append(Want(cond_type, FALSE, failed.reason, f"not run: {failed_stage or 'a'} stage failed"))
            previous_done = False
            continue
        if not previous_done:
            prev = STAGES[STAGES.index(stage) - 1]
            wants.append(Want(cond_type, FALSE, Reason.WAITING, f"waiting for the {prev} stage"))
            continue
        name = stage_job_name(ftj, stage, revision) if revision is not None else None
        job = observed.jobs.get(name) if name else None
        if job is None and blocked is not None:  # what exists is still read; nothing new is started
            wants.append(Want(cond_type, FALSE, blocked.reason, blocked.message))
            if model is None:  # nothing starts until it exists: a Warning, once
                problems.append(wants[-1])
            previous_done = False
            continue
        assert name is not None and revision is not None
        outcome = _stage_outcome(stage, name, job, recorded=getattr(ftj.status.stages, stage))
        if model is not None and (job is None or (is_multinode(ftj, stage) and not (outcome.done or outcome.failed))):
            try:
                children = build_stage_children(ftj, model, stage, revision=revision,
                                                retain=_protected(ftj, model, revision))
            except BuildError as err:
                failed, failed_stage = Want(FAILED, TRUE, Reason.INVALID_SPEC, str(err)), None
                wants.append(Want(cond_type, FALSE, Reason.INVALID_SPEC, str(err)))
                previous_done = False
                continue
            for child in children:
                if _exists(child, observed):
                    continue
                actions.append(CreateChild(child))
                actions.append(EmitEvent("Normal", Reason.JOB_CREATED,
                                         f"Created {child['kind']} {child['metadata']['name']} for the {stage} stage"
                                         f" of revision {revision.key}",
                                         child=f"{child['kind']}/{child['metadata']['name']}"))
        wants.append(outcome.want)
        if outcome.warn:
            problems.append(outcome.want)
        if outcome.status:
            stages_status[stage] = outcome.status
        if outcome.result is not None:
            results[stage] = outcome.result
        if outcome.failed is not None:
            failed, failed_stage = outcome.failed, f"the {stage}"
        previous_done = outcome.done

    artifacts = _artifacts(revision, results)
    evaluation = results.get("evaluate") if previous_done else None
    metrics = dict(evaluation.metrics) if evaluation else {}
    done = ftj.model_copy(update={"status": ftj.status.model_copy(update={"artifacts": artifacts})})
    approval, undecided = _approval(ftj, artifacts, evaluation)
    passed_want, promoted_want = _gate_and_promotion(done, model, evaluation, failed, observed.now,
                                                     approval=approval, undecided=undecided)
    actions += _approval_events(ftj, approval, undecided)
    wants += [passed_want, promoted_want, failed or Want(FAILED, FALSE, Reason.AS_EXPECTED, "no stage failed")]

    conditions = rebuild(ftj.status.conditions, wants, generation=gen, now=observed.now)
    # A Pod-level cause is news when it changes, though the condition stays False.
    before = {c.type: c for c in ftj.status.conditions}
    actions += [EmitEvent("Warning", w.reason, f"{w.type}={w.status}: {w.message}") for w in problems
                if (b := before.get(w.type)) is None or (b.reason, b.message) != (w.reason, w.message)]
    # A failed run's Passed=False is not a rejection: its Failed=True event says what happened.
    actions += transition_events(ftj.status.conditions, conditions, warn_when_true=(FAILED,),
                                 warn_when_false=(PASSED,) if failed is None else ())
    status.update(
        phase=derive_phase(conditions, started=bool(stages_status)),
        stages=stages_status,
        metrics=metrics,
        artifacts=artifacts.to_dict(),
        lineage=_lineage(results, artifacts, model, promoted_want),
        conditions=[c.to_dict() for c in conditions],
    )
    if evaluation is not None and evaluation.samples:
        status["samples"] = [x.model_dump(by_alias=True, exclude_none=True) for x in evaluation.samples]
    # The last decision stays recorded while a new revision runs: it must not be mistaken for one about that revision.
    record = approval if approval is not None else ftj.status.approval
    if record is not None:
        status["approval"] = record.to_dict()
    return Plan(actions=tuple(actions), status=merge_patch_from(ftj.status.to_dict(), status))


def _approval(ftj: FineTuneJob, artifacts: RunArtifacts,
              evaluation: StageResult | None) -> tuple[Approval | None, str]:
    """With evaluation.approval manual and a passed gate: the person's decision on the current revision, and why
    there is none yet ("" when decided). None when no decision is asked for (yet)."""
    if ftj.spec.evaluation.approval != "manual" or evaluation is None or artifacts.revision is None:
        return None, ""
    if not decide(ftj.spec.evaluation.thresholds.to_dict(), evaluation.metrics).passed:
        return None, ""
    return decide_approval(artifacts.revision, ftj.metadata.annotations, ftj.status.approval)


def _approval_events(ftj: FineTuneJob, approval: Approval | None, undecided: str) -> list[Action]:
    """A Normal event when a revision starts waiting for a person, and when the person decides."""
    before = ftj.status.approval
    if approval is None or (before is not None and (before.revision, before.decision)
                            == (approval.revision, approval.decision)):
        return []
    key = approval.revision or ""
    if approval.decision == "Pending":
        return [EmitEvent("Normal", Reason.AWAITING_APPROVAL,
                          f"Revision {key} passed its gate and awaits approval ({undecided}): "
                          f"{approval_command(ftj.name, key)}")]
    if approval.decision == "Approved":
        return [EmitEvent("Normal", Reason.APPROVED, f"Revision {key} approved for promotion")]
    return [EmitEvent("Normal", Reason.REJECTED, f"Revision {key} rejected: it will not be served")]


def _known_revision(ftj: FineTuneJob, observed: ObservedFineTuneJob) -> Revision | None:
    """The revision that the current spec's Jobs already write, read back from their labels (the newest)."""
    key = spec_key(ftj)
    mine = [j for j in observed.jobs.values() if j.spec_key == key and j.revision_key]
    if not mine:
        return None
    newest = max(mine, key=lambda j: (j.created, j.name))
    return same_revision(ftj, newest.revision_key, newest.start_model or None)


def _revision(ftj: FineTuneJob, model: GPTModel, observed: ObservedFineTuneJob) -> tuple[Revision | None, str | None]:
    """(the revision the current spec writes, why it must wait to start). Once a revision's Jobs exist their labels
    say which it is, so it never moves while it runs (whatever the GPTModel serves meanwhile). A new spec keeps the
    starting point of the run's earlier revisions (the same experiment, trained another way), unless startFrom
    changed what that must be."""
    known = _known_revision(ftj, observed)
    if known is not None:
        return known, None
    mode = ftj.spec.start_from
    earlier = max((j for j in observed.jobs.values() if j.revision_key), key=lambda j: (j.created, j.name),
                  default=None)
    if mode == "source":
        return new_revision(ftj, model), None
    if earlier is not None and (earlier.start_model or mode == "auto"):
        return new_revision(ftj, model, earlier.start_model or None), None
    served = served_revision_from_status(model)
    if served is not None and served.revision == ftj.name:
        # A run never starts from its own output: it starts from what its revision replaced.
        served = previous_revision_from_status(model)
    if served is None:
        if mode == "serving":
            return None, f"startFrom: serving, but GPTModel {model.name} serves no fine-tuned revision yet"
        return new_revision(ftj, model), None
    # A LoRA revision starts from its adapter: the train stage merges it into its base first.
    return new_revision(ftj, model, served.adapter or served.model), None


def _protected(ftj: FineTuneJob, model: GPTModel | None, revision: Revision) -> tuple[str, ...]:
    """This FineTuneJob's revisions that must keep their Jobs and files: the current one, and the ones the GPTModel
    serves or would roll back to."""
    keys = {revision.key}
    if model is not None:
        for served in (served_revision_from_status(model), previous_revision_from_status(model)):
            if served is not None and served.revision == ftj.name:
                keys.add(revision_key_of(served.adapter or served.model))
    return tuple(sorted(k for k in keys if k))


def _retire(ftj: FineTuneJob, model: GPTModel | None, revision: Revision,
            observed: ObservedFineTuneJob) -> list[Action]:
    """Delete the Jobs of revisions the spec moved away from (a running one would spend GPUs on weights nobody can
    serve), keeping those of protected revisions. Their files go in the next prepare stage's retention sweep."""
    keep = set(_protected(ftj, model, revision))
    current = {stage_job_name(ftj, stage, revision) for stage in STAGES}
    actions: list[Action] = []
    for job in sorted(observed.jobs.values(), key=lambda j: j.name):
        if job.name in current or job.revision_key in keep or not job.revision_key:
            continue
        actions.append(DeleteChild("Job", job.name, ftj.namespace))
        actions.append(EmitEvent("Normal", Reason.JOB_DELETED,
                                 f"Deleted Job {job.name}: revision {job.revision_key} is no longer wanted"))
    return actions


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
    if result is not None and (job.complete or job.failed_condition is not None):
        # Recorded with the Job's outcome, in the same status write: a Pod's result comes moments before its Job
        # completes, and a write of its own would only be followed by the completion's.
        timing["result"] = result.to_dict()
    elif result is None and job.complete and any(p.phase in ("Pending", "Running", "") for p in job.pods):
        # The Job's Complete reached this pass before its Pod's terminated status did (two watches): the Pod's
        # next event brings the result. Not a stage that completed without one.
        return _Stage(Want(cond_type, FALSE, Reason.JOB_RUNNING, f"Job {name} completed; reading its Pod's result"),
                      status={k: v for k, v in timing.items() if k != "completionTime"})
    elif result is None and job.complete:
        # Complete, but nothing says what the stage did: waiting would wait forever.
        where = (f"the termination message of Pod {pod.name}" if pod is not None
                 else "the termination messages of its Pods, but none is left")
        message = (f"{stage} Job {name} completed without a readable stage result (looked for a "
                   f"{STAGE_RESULT_API_VERSION} document in {where})")
        return _Stage(Want(cond_type, FALSE, Reason.RESULT_MISSING, message),
                      failed=Want(FAILED, TRUE, Reason.RESULT_MISSING, message), status=timing)
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
    if job.suspended:
        # Kueue admits it by unsuspending it (quota free, all of a multi-node Job's Pods at once); the operator
        # never does. A Job Kueue suspends again (preempted) waits here too, its Pods gone.
        message = (f"Job {name} is queued in Kueue LocalQueue {job.queue}: it starts when Kueue admits it"
                   if job.queue else f"Job {name} is suspended: it starts when it is resumed")
        return _Stage(Want(cond_type, FALSE, Reason.QUEUED, message), status=timing)
    problem = next((found for pod in job.pods if (found := pod.problem()) is not None), None)
    if problem is not None:
        return _Stage(Want(cond_type, FALSE, problem[0], _cut(f"Job {name}: {problem[1]}")), status=timing, warn=True)
    # A Pod being deleted was lost (a drained node, a preemption), not a failed attempt.
    attempts = sorted((p for p in job.pods if p.phase == "Failed" and not p.deleted), key=lambda p: (p.created, p.name))
    if attempts:
        last = attempts[-1]
        said = parse_stage_result(last.message, stage=stage)
        told = said.message if said is not None else last.message.strip()
        how = f"{last.reason or 'Error'}, exit code {last.exit_code}" if last.exit_code is not None else last.reason
        message = (f"Job {name}: attempt {len(attempts)} failed ({how or 'Failed'})" + (f": {told}" if told else "")
                   + "; retrying")
        return _Stage(Want(cond_type, FALSE, Reason.ATTEMPT_FAILED, _cut(message)), status=timing, warn=True)
    if job.start_time is None:
        # The Job controller has not started it yet (its Pod may show first): still as created, so that its start
        # is one change of the status, not two.
        return _Stage(Want(cond_type, FALSE, Reason.JOB_CREATED, f"created Job {name}"), status=timing)
    return _Stage(Want(cond_type, FALSE, Reason.JOB_RUNNING, f"Job {name} is running"), status=timing)


def _artifacts(revision: Revision | None, results: dict[str, StageResult]) -> RunArtifacts:
    """The current revision's keys and directory, and what its stages reported writing there."""
    known = set(RunArtifacts.model_fields) | {f.alias for f in RunArtifacts.model_fields.values() if f.alias}
    merged: dict[str, Any] = {}
    if revision is not None:
        merged.update(revision=revision.key, directory=revision.directory)
        if revision.start_model:
            merged["baseModel"] = revision.start_model
    for stage in STAGES:
        if stage in results:
            merged.update({k: v for k, v in results[stage].artifacts.items() if k in known - {"revision", "directory"}})
    if "train" in results and results["train"].digest:
        merged["digest"] = results["train"].digest
    return RunArtifacts.model_validate(merged)


def _gate_and_promotion(ftj: FineTuneJob, model: GPTModel | None, evaluation: StageResult | None,
                        failed: Want | None, now: str, *, approval: Approval | None = None,
                        undecided: str = "") -> tuple[Want, Want]:
    """Passed from the thresholds; Promoted from what the GPTModel serves (its own pass decides, by the rule of
    reconcile/promotion.py; this pass only reads the outcome) and, with approval manual, from a person's decision."""
    promote = ftj.spec.evaluation.promote
    if evaluation is None:
        if failed is not None:
            return (Want(PASSED, FALSE, failed.reason, "not evaluated: a stage failed"),
                    Want(PROMOTED, FALSE, failed.reason, "not promoted: a stage failed"))
        wait = Want(PASSED, UNKNOWN, Reason.WAITING, "waiting for the evaluate stage")
        if not promote:
            return wait, Want(PROMOTED, FALSE, Reason.PROMOTION_NOT_REQUESTED, "spec.evaluation.promote is false")
        return wait, Want(PROMOTED, UNKNOWN, Reason.WAITING, "waiting for the gate")
    decision = decide(ftj.spec.evaluation.thresholds.to_dict(), evaluation.metrics)
    # Every number in the message, the checks that held too: a rejection should show how close it came.
    numbers = "; ".join(c.message for c in decision.checks) or decision.message
    passed = Want(PASSED, TRUE if decision.passed else FALSE, decision.reason, numbers)
    if not decision.passed:
        return passed, Want(PROMOTED, FALSE, decision.reason, "not promoted: the gate did not pass")
    if model is None:
        return passed, Want(PROMOTED, FALSE, Reason.MODEL_NOT_FOUND, f"GPTModel {ftj.spec.model.name} not found")
    serving = served_revision_from_status(model)
    mine = served_revision_for(ftj, model)
    if mine is not None and mine.same_files(serving):
        return passed, Want(PROMOTED, TRUE, Reason.PROMOTED, f"served by GPTModel {model.name}")
    if approval is not None and approval.decision == "Rejected":
        return passed, Want(PROMOTED, FALSE, Reason.REJECTED,
                            f"revision {approval.revision} was rejected by a person (gptops.io/approved=false)")
    if approval is not None and approval.decision == "Pending":
        key = approval.revision or ""
        return passed, Want(PROMOTED, FALSE, Reason.AWAITING_APPROVAL,
                            f"passed; revision {key} awaits a person's approval ({undecided}). Approve: "
                            f"{approval_command(ftj.name, key)}; reject: {approval_command(ftj.name, key, False)}")
    pin = model.spec.serving.revision
    was = get_condition(ftj.status.conditions, PROMOTED)
    now_serving = serving.revision if serving is not None else "its source"
    if serving is not None and serving.revision == ftj.name and promote:
        earlier = revision_key_of(serving.adapter or serving.model) or "an earlier revision"
        return passed, Want(PROMOTED, FALSE, Reason.WAITING,
                            f"GPTModel {model.name} serves this run's revision {earlier}; this one passed and waits "
                            "to be served")
    # Once served, a revision that is no longer served stays Superseded (rolled back from, too: the GPTModel does not
    # serve it again on its own), until it is served again or the spec changes.
    # The message names what superseded it and stays: each later promotion of the GPTModel is no news to this run
    # (and would be a status write on every superseded run).
    still = (was is not None and was.status == FALSE and was.reason == Reason.SUPERSEDED
             and was.observed_generation == ftj.metadata.generation)
    if still:
        assert was is not None
        return passed, Want(PROMOTED, FALSE, Reason.SUPERSEDED, was.message)
    if was is not None and was.status == TRUE:
        return passed, Want(PROMOTED, FALSE, Reason.SUPERSEDED, f"superseded by {now_serving} in GPTModel {model.name}")
    if pin and pin != ftj.name:
        return passed, Want(PROMOTED, FALSE, Reason.PINNED_REVISION,
                            f"GPTModel {model.name} pins spec.serving.revision {pin}")
    if not promote and pin != ftj.name:
        return passed, Want(PROMOTED, FALSE, Reason.PROMOTION_NOT_REQUESTED, "spec.evaluation.promote is false")
    before = get_condition(ftj.status.conditions, PASSED)
    passed_at = before.last_transition_time if before is not None and before.status == TRUE else now
    if serving is not None and order(serving) > (passed_at or "", ftj.name):
        # The GPTModel serves the revision that passed last (reconcile/promotion.py).
        return passed, Want(PROMOTED, FALSE, Reason.SUPERSEDED,
                            f"superseded by {now_serving} in GPTModel {model.name}, which passed its gate after this one")
    return passed, Want(PROMOTED, FALSE, Reason.WAITING, f"passed; waiting for GPTModel {model.name} to serve it")


def promotion_message(model: str, served: str, previous: str | None) -> str:
    """The event text of a promotion: what is served now and what was before."""
    return f"Serving revision {served} in GPTModel {model} (previous revision: {previous or 'its source'})"


def _lineage(results: dict[str, StageResult], artifacts: RunArtifacts, model: GPTModel | None,
             promoted: Want) -> dict[str, Any]:
    prepare, evaluation = results.get("prepare"), results.get("evaluate")
    lineage = {
        "datasetDigest": prepare.digest if prepare else None,
        "directory": artifacts.directory,
        "checkpoint": artifacts.checkpoint or artifacts.model or artifacts.adapter,
        "weightsDigest": artifacts.digest,
        "evaluation": (evaluation.artifacts.get("evaluation") or evaluation.artifacts.get("report"))
        if evaluation else None,
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
    promoted_reason = status.get(PROMOTED, ("", ""))[1]
    if passed == TRUE and promoted_reason == Reason.AWAITING_APPROVAL:
        return "AwaitingApproval"
    if passed == TRUE and promoted_reason == Reason.REJECTED:
        return "Rejected"
    if passed == TRUE:
        return "Passed"
    if passed == FALSE:
        return "Rejected"
    if any(status.get(c, ("", ""))[1] == Reason.QUEUED for c in STAGE_CONDITION.values()):
        return "Queued"
    if status.get(TRAINED, ("",))[0] == TRUE:
        return "Evaluating"
    if status.get(PREPARED, ("",))[0] == TRUE:
        return "Training"
    return "Preparing" if started else "Pending"


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 12] + " [truncated]"
