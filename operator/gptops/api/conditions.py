"""Status conditions per the Kubernetes API conventions: types, CamelCase reasons, and a setter that keeps
lastTransitionTime when the status did not change. Pure."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ConditionStatus = Literal["True", "False", "Unknown"]
TRUE: ConditionStatus = "True"
FALSE: ConditionStatus = "False"
UNKNOWN: ConditionStatus = "Unknown"

# GPTModel condition types
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
#: Only with spec.monitoring: the live evaluation of the served revision (reconcile/monitoring.py).
DRIFTED = "Drifted"
#: Only with spec.artifacts.pvc, once the claim is read: whether every Pod that needs it can mount it at once.
ARTIFACTS_SHARED = "ArtifactsShared"
GPTMODEL_CONDITIONS = (READY, PROGRESSING, DEGRADED)

# FineTuneJob condition types
PREPARED = "Prepared"
TRAINED = "Trained"
EVALUATED = "Evaluated"
PASSED = "Passed"
PROMOTED = "Promoted"
FAILED = "Failed"
FINETUNEJOB_CONDITIONS = (PREPARED, TRAINED, EVALUATED, PASSED, PROMOTED, FAILED)


class Reason:
    """CamelCase condition reasons. Add here rather than writing string literals elsewhere."""

    # stages
    JOB_CREATED = "JobCreated"
    JOB_DELETED = "JobDeleted"
    JOB_RUNNING = "JobRunning"
    QUEUED = "Queued"
    ATTEMPT_FAILED = "AttemptFailed"
    JOB_SUCCEEDED = "JobSucceeded"
    JOB_FAILED = "JobFailed"
    STAGE_FAILED = "StageFailed"
    RESULT_MISSING = "ResultMissing"
    WAITING = "Waiting"
    # gate and promotion
    THRESHOLDS_MET = "ThresholdsMet"
    THRESHOLDS_NOT_MET = "ThresholdsNotMet"
    NO_THRESHOLDS = "NoThresholds"
    PROMOTED = "Promoted"
    PROMOTION_NOT_REQUESTED = "PromotionNotRequested"
    PINNED_REVISION = "PinnedRevision"
    SUPERSEDED = "Superseded"
    GATE_NOT_PASSED = "GateNotPassed"
    # human review (evaluation.approval: manual)
    AWAITING_APPROVAL = "AwaitingApproval"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    # references and spec
    MODEL_NOT_FOUND = "ModelNotFound"
    INVALID_SPEC = "InvalidSpec"
    ARTIFACTS_NOT_CONFIGURED = "ArtifactsNotConfigured"
    # serving
    NO_REVISION = "NoRevision"
    DEPLOYMENT_CREATED = "DeploymentCreated"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_DEADLINE_EXCEEDED = "RolloutDeadlineExceeded"
    ROLLED_BACK = "RolledBack"
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    AS_EXPECTED = "AsExpected"
    SCALE_TO_ZERO_NEEDS_KEDA = "ScaleToZeroNeedsKEDA"
    # the artifacts claim (ArtifactsShared)
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_CLAIM = "ReadWriteOnceClaim"
    ONE_POD_AT_A_TIME = "OnePodAtATime"
    # live evaluation (Drifted)
    NOT_YET_RUN = "NotYetRun"
    WITHIN_TOLERANCE = "WithinTolerance"
    METRICS_WORSENED = "MetricsWorsened"
    INPUT_DRIFT = "InputDrift"
    MONITOR_FAILED = "MonitorFailed"


class Condition(BaseModel):
    """One status condition, serialized with camelCase keys."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    observed_generation: int | None = None
    last_transition_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def now_rfc3339() -> str:
    """The current UTC time as the API server writes it (seconds precision, 'Z')."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str | None) -> _dt.datetime | None:
    """A time as the API server writes it, or None when it is missing or unreadable."""
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _as_condition(c: Condition | Mapping[str, Any]) -> Condition:
    return c if isinstance(c, Condition) else Condition.model_validate(c)


def get_condition(conditions: Iterable[Condition | Mapping[str, Any]] | None, type_: str) -> Condition | None:
    """The condition of that type, or None."""
    for c in conditions or ():
        cond = _as_condition(c)
        if cond.type == type_:
            return cond
    return None


def is_true(conditions: Iterable[Condition | Mapping[str, Any]] | None, type_: str) -> bool:
    """Whether the condition of that type is present with status True."""
    cond = get_condition(conditions, type_)
    return cond is not None and cond.status == TRUE


def set_condition(
    conditions: Iterable[Condition | Mapping[str, Any]] | None,
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """Return a new list with `type_` set; lastTransitionTime moves only when the status changes.

    Order is kept (a new type is appended), so a rebuilt list patches cleanly as a whole (DESIGN §4).
    """
    if isinstance(status, bool):
        status = TRUE if status else FALSE
    out = [_as_condition(c) for c in conditions or ()]
    index = next((i for i, c in enumerate(out) if c.type == type_), None)
    old = out[index] if index is not None else None
    keep_time = old is not None and old.status == status and old.last_transition_time
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=old.last_transition_time if keep_time else (now or now_rfc3339()),
    )
    if index is None:
        out.append(updated)
    else:
        out[index] = updated
    return out


def conditions_to_dicts(conditions: Iterable[Condition | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Serialize conditions for a status patch."""
    return [_as_condition(c).to_dict() for c in conditions]
