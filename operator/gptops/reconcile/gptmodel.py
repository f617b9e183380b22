"""plan_gptmodel: the vLLM Deployment and Service for the revision to serve, the rollout watch and the rollback.
Pure: no I/O, no kopf or kubernetes; the builders make the manifests.

Which revision: the promotion rule (reconcile/promotion.py) over the FineTuneJobs this pass observes, a pin first;
else what status already serves, else the GPTModel's own source where vLLM can load it. This pass is the only writer
of the GPTModel's status. A new revision that is not Available before its deadline is rolled back to
status.previousRevision; the Deployment remembers the revision it was rolled back from (annotations), so neither
the pin nor the promotion order serves it again until something newer comes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gptops.api.artifacts import (
    SERVING_STATUS_FIELDS,
    ServedRevision,
    base_served_revision,
    recorded_revision,
    revision_key_of,
    serving_status,
)
from gptops.api.conditions import (
    ARTIFACTS_SHARED,
    DEGRADED,
    DRIFTED,
    FALSE,
    PROGRESSING,
    READY,
    TRUE,
    Reason,
    get_condition,
    parse_rfc3339,
)
from gptops.api.conditions import PASSED as FTJ_PASSED
from gptops.api.constants import (
    ANNOTATION_ADAPTER,
    ANNOTATION_ARTIFACT,
    ANNOTATION_REVISION,
    ANNOTATION_SPEC_HASH,
    GROUP,
    KEDA_KIND,
)
from gptops.api.gptmodel import GPTModel
from gptops.builders import (
    adapter_model_names,
    build_autoscaler,
    build_deployment,
    build_scaled_object,
    build_service,
    deployment_name,
)
from gptops.reconcile.conditions import Want, rebuild, transition_events
from gptops.reconcile.finetunejob import promotion_message
from gptops.reconcile.monitoring import (
    DRIFT_ROLLBACK_PREFIX,
    MonitoringDecision,
    plan_monitoring,
)
from gptops.reconcile.observed import DeploymentState, ObservedGPTModel
from gptops.reconcile.plan import (
    Action,
    ApplyChild,
    CreateChild,
    DeleteChild,
    EmitEvent,
    Plan,
)
from gptops.reconcile.promotion import candidates, choose, order, passed_revision
from gptops.reconcile.sharing import artifacts_shared

#: When the Deployment's current revision started rolling out (RFC 3339).
ANNOTATION_ROLLOUT_STARTED = f"{GROUP}/rollout-started"
#: The revision this Deployment was rolled back from (the FineTuneJob, and its weights), and why.
ANNOTATION_ROLLED_BACK_FROM = f"{GROUP}/rolled-back-from"
ANNOTATION_ROLLED_BACK_ARTIFACT = f"{GROUP}/rolled-back-artifact"
ANNOTATION_ROLLED_BACK_ADAPTER = f"{GROUP}/rolled-back-adapter"
#: "spec" while the rollout under watch is a change of spec.serving on the same revision (never rolled back).
ANNOTATION_ROLLOUT_OF = f"{GROUP}/rollout-of"
ROLLOUT_OF_SPEC = "spec"
#: The GPTModel's generation when it rolled back: a later spec change (a fixed cause, a changed pin) retries.
ANNOTATION_ROLLED_BACK_GENERATION = f"{GROUP}/rolled-back-generation"
ANNOTATION_ROLLBACK_REASON = f"{GROUP}/rollback-reason"
SOURCE_REVISION = "source"


def plan_gptmodel(model: GPTModel, observed: ObservedGPTModel) -> Plan:
    """The actions and the status of one level-based pass over a GPTModel."""
    now = observed.now
    dep = observed.deployment
    actions: list[Action] = []
    before = model.status.to_dict()
    serving = {k: before.get(k) for k in SERVING_STATUS_FIELDS}  # what this pass decides to serve
    pin_note: Want | None = None  # a pin that cannot be served (yet): said, while the current revision serves on

    pin = model.spec.serving.revision
    current = recorded_revision(serving, "serving")
    rolled_back = _rolled_back_from(dep, model.metadata.generation)
    pinned = None
    if pin:
        ftj = observed.finetunejob(pin)
        pinned = passed_revision(ftj, model) if ftj is not None else None
        gate = get_condition(ftj.status.conditions, FTJ_PASSED) if ftj is not None else None
        if ftj is None:
            pin_note = Want(DEGRADED, TRUE, Reason.NO_REVISION,
                            f"spec.serving.revision {pin}: there is no FineTuneJob {pin} in {model.namespace}")
        elif pinned is None and gate is not None and gate.status == FALSE:
            pin_note = Want(DEGRADED, TRUE, Reason.GATE_NOT_PASSED,
                            f"spec.serving.revision {pin}: FineTuneJob {pin} did not pass its gate; only a revision "
                            "that passed is served")
        elif pinned is None and ftj.status.approval is not None and ftj.status.approval.decision == "Rejected":
            pin_note = Want(DEGRADED, TRUE, Reason.REJECTED,
                            f"spec.serving.revision {pin}: a person rejected FineTuneJob {pin}'s revision "
                            f"{ftj.status.approval.revision}; it is not served")
        elif pinned is None and gate is not None and gate.status == TRUE and ftj.spec.evaluation.approval == "manual":
            pin_note = Want(PROGRESSING, TRUE, Reason.AWAITING_APPROVAL,
                            f"spec.serving.revision {pin}: FineTuneJob {pin} passed its gate and waits for a person's "
                            "approval (gptops.io/approved)")
        elif pinned is None:
            pin_note = Want(PROGRESSING, TRUE, Reason.WAITING,
                            f"spec.serving.revision {pin}: waiting for FineTuneJob {pin} to pass its gate")
    choice = choose(current, candidates(observed.finetunejobs, model), pin=pin, pinned=pinned,
                    rolled_back=rolled_back)
    if choice.serve is not None and not choice.serve.same_files(current):
        serving.update(serving_status(choice.serve, _served(model, serving)))
        how = "pinned" if choice.pinned else "promoted"
        actions.append(EmitEvent("Normal", Reason.PROMOTED,
                                 promotion_message(model.name, choice.serve.revision or SOURCE_REVISION,
                                                   current.revision if current else None) + f" ({how})"))

    served = _served(model, serving)
    if served is None:
        wants = [
            Want(READY, FALSE, Reason.NO_REVISION,
                 "nothing to serve yet: promote a FineTuneJob (spec.evaluation.promote) or pin "
                 "spec.serving.revision"),
            Want(PROGRESSING, FALSE, Reason.NO_REVISION, "no revision to roll out"),
            Want(DEGRADED, FALSE, Reason.AS_EXPECTED, ""),
        ]
        return _finish(model, observed, actions, serving, pin_note, wants, endpoint=None, ready_replicas=0,
                       watch=plan_monitoring(model, observed, None, rolled_out=False))

    revision = served.revision or SOURCE_REVISION
    same = dep is not None and served.same_files(_deployed(dep))
    complete = same and dep is not None and _rollout_complete(dep)
    rolled_out_before = same and _rolled_out_before(model)
    failure = (_rollout_failure(model, dep, now) if same and dep is not None and not complete
               and not rolled_out_before else None)
    previous = _previous(serving)
    kept = dep.annotations if same and dep is not None else {}
    # A change of spec.serving on the same revision is a rollout too: watched, but never "fixed" by rolling back to
    # another revision (the same spec would break that one as well). It is Degraded until the spec is fixed.
    older = _older_adapters(model, observed, served, rolled_back)
    in_place = same and kept.get(ANNOTATION_SPEC_HASH) != _deployment(model, served, older, started=None)[
        "metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    of_spec = in_place or (same and not complete and kept.get(ANNOTATION_ROLLOUT_OF) == ROLLOUT_OF_SPEC)
    if in_place:
        failure = None  # what failed was the spec before this one: the new one gets its own watch
    # Live evaluation of what is rolled out (reconcile/monitoring.py); a drift with action rollback takes the path of
    # a failed rollout when there is a revision to go back to.
    watch = plan_monitoring(model, observed, served, rolled_out=complete and not in_place)
    if failure is None and watch.rollback and complete and not of_spec and previous is not None \
            and not previous.same_files(served):
        failure = watch.rollback
        watch.actions = [a for a in watch.actions if not isinstance(a, CreateChild)]
    if failure is not None and previous is not None and not previous.same_files(served) and not of_spec:
        back = previous.revision or SOURCE_REVISION
        serving.update(serving_status(previous, None))
        # The way back is not watched: there is nothing further to roll back to.
        older = _older_adapters(model, observed, previous, served)
        rollback = _deployment(model, previous, older, started=None, rolled_back=served, rollback_reason=failure,
                               rolled_back_generation=model.metadata.generation)
        if not observed.service:
            actions.append(CreateChild(build_service(model)))
        actions.append(ApplyChild(rollback))  # the Degraded=True transition is its (Warning) event
        wants = [
            _ready(dep),
            Want(PROGRESSING, TRUE, Reason.ROLLOUT_IN_PROGRESS, f"rolling back to revision {back}"),
            _degraded(rollback["metadata"]["annotations"]),
        ]
        return _finish(model, observed, actions, serving, pin_note, wants, endpoint=model.endpoint(),
                       ready_replicas=_ready_replicas(dep), watch=watch, older=older)

    # A new revision, or a new spec, is watched from now until it is rolled out; else the watch goes on (or none).
    desired = _deployment(
        model, served, older,
        # Kept once rolled out: a change of a Deployment's annotations is a new generation to the API server, which
        # the controller has yet to observe; removing it would show the rollout in progress again for a moment.
        started=now if not same or in_place else kept.get(ANNOTATION_ROLLOUT_STARTED),
        rolled_back=rolled_back if same else None,
        rollback_reason=kept.get(ANNOTATION_ROLLBACK_REASON),
        rolled_back_generation=model.metadata.generation if rolled_back is not None else None,
        rollout_of=ROLLOUT_OF_SPEC if of_spec else None,
    )
    if not observed.service:
        actions.append(CreateChild(build_service(model)))
    if dep is None or _differs(dep, desired):
        actions.append(ApplyChild(desired))
        if not same:
            verb, reason = ("Created", Reason.DEPLOYMENT_CREATED) if dep is None else \
                ("Updated", Reason.ROLLOUT_IN_PROGRESS)
            actions.append(EmitEvent("Normal", reason,
                                     f"{verb} Deployment {desired['metadata']['name']} for revision {revision}"))

    if not same:
        progressing = Want(PROGRESSING, TRUE, Reason.ROLLOUT_IN_PROGRESS, f"rolling out revision {revision}")
        degraded = _degraded(desired["metadata"]["annotations"])
    elif failure is not None and of_spec:
        progressing = Want(PROGRESSING, FALSE, Reason.ROLLOUT_DEADLINE_EXCEEDED,
                           f"the change to spec.serving did not become Available ({failure})")
        degraded = Want(DEGRADED, TRUE, Reason.ROLLOUT_DEADLINE_EXCEEDED,
                        f"the change to spec.serving (generation {model.metadata.generation}) did not become "
                        f"Available ({failure}); revision {revision} is still served by the Pods that were; fix "
                        "spec.serving")
    elif failure is not None:
        progressing = Want(PROGRESSING, FALSE, Reason.ROLLOUT_DEADLINE_EXCEEDED,
                           f"revision {revision} did not become Available ({failure})")
        degraded = Want(DEGRADED, TRUE, Reason.ROLLOUT_DEADLINE_EXCEEDED,
                        f"revision {revision} did not become Available ({failure}); no previous revision to "
                        "roll back to")
    elif (complete or rolled_out_before) and not in_place:  # a replica lost since is the Deployment's to replace
        progressing = Want(PROGRESSING, FALSE, Reason.ROLLOUT_COMPLETE, f"revision {revision} is rolled out")
        degraded = _degraded(desired["metadata"]["annotations"])
    else:
        assert dep is not None
        # The same words as when it started: the Deployment's counts move several times in a rollout, and each
        # change here would be a status write of its own (`kubectl rollout status` has them).
        progressing = Want(PROGRESSING, TRUE, Reason.ROLLOUT_IN_PROGRESS, f"rolling out revision {revision}")
        degraded = _degraded(desired["metadata"]["annotations"])
    return _finish(model, observed, actions, serving, pin_note, [_ready(dep), progressing, degraded],
                   endpoint=model.endpoint(), ready_replicas=_ready_replicas(dep), watch=watch,
                   older=older)


def _served(model: GPTModel, serving: dict[str, Any]) -> ServedRevision | None:
    """What the serving fields say is served (the source, before any promotion)."""
    return recorded_revision(serving, "serving") or base_served_revision(model)


def _previous(serving: dict[str, Any]) -> ServedRevision | None:
    return recorded_revision(serving, "previous")


def _annotated(annotations: Any, revision_key: str, artifact_key: str, adapter_key: str) -> ServedRevision | None:
    name, artifact = annotations.get(revision_key), annotations.get(artifact_key)
    if not name or not artifact:
        return None
    return ServedRevision(revision=None if name == SOURCE_REVISION else name, model=artifact,
                          adapter=annotations.get(adapter_key) or None)


def _deployed(dep: DeploymentState) -> ServedRevision | None:
    """The revision the Deployment serves, as its annotations name it."""
    return _annotated(dep.annotations, ANNOTATION_REVISION, ANNOTATION_ARTIFACT, ANNOTATION_ADAPTER)


def _rolled_back_from(dep: DeploymentState | None, generation: int) -> ServedRevision | None:
    """The revision this Deployment was rolled back from, as its annotations name it, while the GPTModel's spec is
    the one that rolled back (any change since, a fixed cause or a new pin, deserves another try)."""
    if dep is None or dep.annotations.get(ANNOTATION_ROLLED_BACK_GENERATION) != str(generation):
        return None
    return _annotated(dep.annotations, ANNOTATION_ROLLED_BACK_FROM, ANNOTATION_ROLLED_BACK_ARTIFACT,
                      ANNOTATION_ROLLED_BACK_ADAPTER)


def spec_hash(manifest: dict[str, Any]) -> str:
    """A digest of what the builders decided (labels, their annotations, spec): a change means a new rollout."""
    meta = manifest["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _OURS}
    doc = {"labels": meta.get("labels") or {}, "annotations": annotations, "spec": manifest["spec"]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


_OURS = (ANNOTATION_SPEC_HASH, ANNOTATION_ROLLOUT_STARTED, ANNOTATION_ROLLED_BACK_FROM,
         ANNOTATION_ROLLED_BACK_ARTIFACT, ANNOTATION_ROLLED_BACK_ADAPTER, ANNOTATION_ROLLED_BACK_GENERATION,
         ANNOTATION_ROLLBACK_REASON, ANNOTATION_ROLLOUT_OF)


def _older_adapters(model: GPTModel, observed: ObservedGPTModel, served: ServedRevision,
                    rolled_back: ServedRevision | None) -> list[ServedRevision]:
    """The LoRA adapters served beside `served` (spec.serving.lora.maxAdapters - 1 of them, oldest first): the
    newest other revisions of the same base that may be promoted and passed before it, never one rolled back from."""
    room = model.spec.serving.lora.max_adapters - 1
    if room <= 0 or not served.adapter:
        return []
    same_base = [r for r in candidates(observed.finetunejobs, model)
                 if r.adapter and r.model == served.model and r.revision != served.revision
                 and not r.same_files(rolled_back) and order(r) < order(served)]
    return sorted(same_base, key=order)[-room:]


def _deployment(model: GPTModel, served: ServedRevision, older: list[ServedRevision], *, started: str | None,
                rolled_back: ServedRevision | None = None, rollback_reason: str | None = None,
                rolled_back_generation: int | None = None, rollout_of: str | None = None) -> dict[str, Any]:
    """The builders' Deployment plus the rollout bookkeeping annotations (absent ones are removed by the apply)."""
    manifest = build_deployment(model, served, older)
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_SPEC_HASH] = spec_hash(manifest)
    back = rolled_back
    for key, value in ((ANNOTATION_ROLLOUT_STARTED, started), (ANNOTATION_ROLLOUT_OF, rollout_of if started else None),
                       (ANNOTATION_ROLLED_BACK_FROM, (back.revision or SOURCE_REVISION) if back else None),
                       (ANNOTATION_ROLLED_BACK_ARTIFACT, back.model if back else None),
                       (ANNOTATION_ROLLED_BACK_ADAPTER, back.adapter if back else None),
                       (ANNOTATION_ROLLED_BACK_GENERATION, str(rolled_back_generation) if back else None),
                       (ANNOTATION_ROLLBACK_REASON, rollback_reason if back else None)):
        if value:
            annotations[key] = value
    return manifest


def _differs(dep: DeploymentState, desired: dict[str, Any]) -> bool:
    want = desired["metadata"]["annotations"]
    return any(dep.annotations.get(k) != want.get(k) for k in _OURS)


def _rollout_complete(dep: DeploymentState) -> bool:
    """Like `kubectl rollout status`: the controller saw this generation and every replica is new and available."""
    return (dep.observed_generation >= dep.generation and dep.updated_replicas >= dep.replicas
            and dep.status_replicas <= dep.updated_replicas and dep.available_replicas >= dep.replicas)


def _rolled_out_before(model: GPTModel) -> bool:
    """This generation's rollout of what is served completed in an earlier pass (its Progressing=False
    RolloutComplete): a replica lost since is the Deployment's to replace, not a failed rollout to undo."""
    progressing = get_condition(model.status.conditions, PROGRESSING)
    return (progressing is not None and progressing.status == FALSE and progressing.reason == Reason.ROLLOUT_COMPLETE
            and progressing.observed_generation == model.metadata.generation)


def _rollout_failure(model: GPTModel, dep: DeploymentState, now: str) -> str | None:
    """Why this rollout has failed, or None while it may still succeed."""
    started = parse_rfc3339(dep.annotations.get(ANNOTATION_ROLLOUT_STARTED))
    if started is None:
        return None  # not a watched rollout: the revision was rolled out before, or this is a rollback
    progressing = dep.condition("Progressing")
    if (dep.observed_generation >= dep.generation and progressing is not None
            and progressing.get("status") == FALSE and progressing.get("reason") == "ProgressDeadlineExceeded"):
        return f"ProgressDeadlineExceeded: {progressing.get('message', '')}".rstrip(": ")
    deadline = model.spec.serving.rollout_deadline_seconds
    current = parse_rfc3339(now)
    if current is not None and (current - started).total_seconds() > deadline:
        return f"not Available within rolloutDeadlineSeconds={deadline}"
    return None


def _ready(dep: DeploymentState | None) -> Want:
    if dep is None:
        return Want(READY, FALSE, Reason.DEPLOYMENT_CREATED, "waiting for the Deployment")
    available = dep.condition("Available")
    detail = f"{min(dep.available_replicas, dep.replicas)}/{dep.replicas} replicas available"
    if available is not None and available.get("status") == TRUE and dep.available_replicas > 0:
        return Want(READY, TRUE, Reason.MINIMUM_REPLICAS_AVAILABLE, detail)
    return Want(READY, FALSE, Reason.MINIMUM_REPLICAS_UNAVAILABLE, detail)


def _ready_replicas(dep: DeploymentState | None) -> int:
    """Ready replicas, up to the Deployment's own count: a rollout's surge Pod beside the old one is not a replica
    more (counted, it would change the status twice in every rollout)."""
    return min(dep.ready_replicas, dep.replicas) if dep is not None else 0


def _degraded(annotations: dict[str, str] | Any) -> Want:
    failed = annotations.get(ANNOTATION_ROLLED_BACK_FROM)
    if not failed:
        return Want(DEGRADED, FALSE, Reason.AS_EXPECTED, "")
    serving = annotations.get(ANNOTATION_REVISION, SOURCE_REVISION)
    why = annotations.get(ANNOTATION_ROLLBACK_REASON, "its rollout failed")
    if why.startswith(DRIFT_ROLLBACK_PREFIX):
        return Want(DEGRADED, TRUE, Reason.ROLLED_BACK, f"revision {failed} {why}; rolled back to revision {serving}")
    return Want(DEGRADED, TRUE, Reason.ROLLED_BACK,
                f"revision {failed} did not become Available ({why}); rolled back to revision {serving}")


def _autoscaler(model: GPTModel, observed: ObservedGPTModel) -> tuple[list[Action], Want | None]:
    """While spec.serving.autoscaling is set: KEDA's ScaledObject where KEDA is installed, else the
    HorizontalPodAutoscaler (each applied when what it says changed, the other one deleted); neither when it is not.
    minReplicas 0 without KEDA is refused (a Degraded reason), and what runs is left as it is."""
    scaling = model.spec.serving.autoscaling
    name, ns = deployment_name(model), model.namespace
    if scaling is not None and scaling.min_replicas == 0 and observed.keda_prometheus is None:
        return [], Want(DEGRADED, TRUE, Reason.SCALE_TO_ZERO_NEEDS_KEDA,
                        "spec.serving.autoscaling.minReplicas 0 needs KEDA (its CRD scaledobjects.keda.sh is not "
                        "installed); a HorizontalPodAutoscaler cannot scale to zero: install KEDA or set minReplicas "
                        "to 1 or more")
    keda = scaling is not None and observed.keda_prometheus is not None
    actions: list[Action] = []
    scaled = build_scaled_object(model, observed.keda_prometheus) if keda and observed.keda_prometheus else None
    if scaled is not None:
        if observed.scaled_object != scaled["metadata"]["annotations"][ANNOTATION_SPEC_HASH]:
            actions.append(ApplyChild(scaled))
    elif observed.scaled_object is not None:
        actions.append(DeleteChild(KEDA_KIND, name, ns))
    hpa = None if keda else build_autoscaler(model)
    if hpa is not None:
        if observed.autoscaler != hpa["metadata"]["annotations"][ANNOTATION_SPEC_HASH]:
            actions.append(ApplyChild(hpa))
    elif observed.autoscaler is not None:
        actions.append(DeleteChild("HorizontalPodAutoscaler", name, ns))
    return actions, None


def _wanted_replicas(model: GPTModel, observed: ObservedGPTModel) -> int:
    """The replicas the GPTModel wants: its spec's, or with an autoscaler the Deployment's (the autoscaler sets them)."""
    if model.spec.serving.autoscaling is not None and observed.deployment is not None:
        return observed.deployment.replicas
    return model.spec.serving.replicas


def _finish(model: GPTModel, observed: ObservedGPTModel, actions: list[Action], serving: dict[str, Any],
            pin_note: Want | None, wants: list[Want], *, endpoint: str | None, ready_replicas: int,
            watch: MonitoringDecision, older: list[ServedRevision] | None = None) -> Plan:
    if pin_note is not None:  # it takes the place of a False Progressing or Degraded, never of a rollout's own
        wants = [pin_note if w.type == pin_note.type and w.status == FALSE else w for w in wants]
    if watch.drifted is not None:
        wants = [*wants, watch.drifted]
    if (shared := artifacts_shared(model, observed, serving=endpoint is not None)) is not None:
        wants = [*wants, shared]
    actions += watch.actions
    scaling_actions, refused = _autoscaler(model, observed)
    actions += scaling_actions
    if refused is not None:  # it takes the place of a False Degraded, never of a rollout's own
        wants = [refused if w.type == refused.type and w.status == FALSE else w for w in wants]
    conditions = rebuild(model.status.conditions, wants, generation=model.metadata.generation, now=observed.now)
    actions += transition_events(model.status.conditions, conditions, warn_when_true=(DEGRADED, DRIFTED),
                                 warn_when_false=(ARTIFACTS_SHARED,))
    served = _served(model, serving)
    status: dict[str, Any] = {
        "observedGeneration": model.metadata.generation,
        "endpoint": endpoint,
        "readyReplicas": ready_replicas,
        "serving": _display(served) if endpoint else None,
        "adapters": [{"revision": rev.revision, "modelName": name, "adapter": rev.adapter}
                     for name, rev in adapter_model_names(model, served, older or ())] or None
        if endpoint and served is not None else None,
        "ready": f"{ready_replicas}/{_wanted_replicas(model, observed)}",
        "conditions": [c.to_dict() for c in conditions],
    }
    if watch.status is not None:
        status["monitoring"] = watch.status
    elif model.spec.monitoring is None and model.status.monitoring is not None:
        status["monitoring"] = None  # monitoring was turned off
    # Written only when this pass changes them, so a pass that changes nothing patches only what it observed.
    before = model.status.to_dict()
    if any(before.get(k) != serving[k] for k in SERVING_STATUS_FIELDS):
        status.update(serving)
    return Plan(actions=tuple(actions), status=status)


def _display(served: ServedRevision | None) -> str | None:
    """What `kubectl get gm` shows as served: the FineTuneJob and its revision key, or the source."""
    if served is None:
        return None
    if served.revision is None:
        return SOURCE_REVISION
    key = revision_key_of(served.adapter or served.model)
    return f"{served.revision} ({key})" if key else served.revision

