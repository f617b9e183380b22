"""What the planners see of the cluster: small frozen snapshots of children, made from API objects (dicts).
Pure: cluster.py fetches the dicts, these functions read them; no I/O, no kopf or kubernetes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from sys import intern
from typing import Any

from gptops.api.constants import (
    ANNOTATION_START_MODEL,
    LABEL_KUEUE_QUEUE,
    LABEL_REVISION_KEY,
    LABEL_SPEC_KEY,
    LABEL_STAGE,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
#: What a plan reads of a Job's condition: not its timestamps.
CONDITION_FIELDS = ("type", "status", "reason", "message")


@dataclass(frozen=True)
class PodState:
    """One Pod of a stage Job: its phase and the termination message of its container."""

    name: str
    phase: str
    created: str = ""
    message: str = ""
    reason: str = ""
    exit_code: int | None = None
    waiting: str = ""
    """Why its container has not started (ErrImagePull, ImagePullBackOff, CreateContainerConfigError, ...)."""
    waiting_message: str = ""
    unschedulable: str = ""
    """The scheduler's message while the Pod cannot be placed (PodScheduled=False, reason Unschedulable)."""
    deleted: bool = False
    """A deletionTimestamp is set: the Pod is going (and its Job replaces it)."""

    def plan_inputs(self) -> tuple[Any, ...]:
        """What a FineTuneJob's plan reads of this Pod: whether it is live (Pending and Running alike), succeeded or
        failed, its result, what keeps it from running. A watch event that changes none of it (scheduled, started,
        ready) changes no plan."""
        live = self.phase in ("Pending", "Running", "")
        return ("live" if live else self.phase, self.message, self.reason, self.exit_code, self.deleted,
                self.problem())

    @property
    def quiet(self) -> bool:
        """Live, with no result, no failed attempt and nothing keeping it from running: a plan reads nothing of it
        (unless its Job completed, which it has not while its Pod is live)."""
        return self.plan_inputs() == ("live", "", "", None, False, None)

    def problem(self) -> tuple[str, str] | None:
        """(reason, message) of what keeps a live Pod from running, or None."""
        if self.deleted or self.phase not in ("Pending", "Running", ""):
            return None
        if self.unschedulable:
            return "Unschedulable", f"Pod {self.name} cannot be scheduled: {self.unschedulable}"
        if self.waiting and self.waiting not in ("ContainerCreating", "PodInitializing"):
            return self.waiting, f"Pod {self.name} is waiting: {self.waiting}: {self.waiting_message}".rstrip(": ")
        return None


@dataclass(frozen=True)
class JobState:
    """One stage Job and its Pods."""

    name: str
    stage: str = ""
    revision_key: str = ""
    spec_key: str = ""
    start_model: str = ""
    """The model directory the revision starts from; "" for the GPTModel's source."""
    created: str = ""
    conditions: tuple[Mapping[str, Any], ...] = ()
    start_time: str | None = None
    completion_time: str | None = None
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    suspended: bool = False
    """spec.suspend: the Job waits (for Kueue to admit it, when it has a queue) and runs no Pod."""
    queue: str = ""
    """The Kueue LocalQueue it waits in (its kueue.x-k8s.io/queue-name label), "" without one."""
    pods: tuple[PodState, ...] = ()

    def plan_inputs(self) -> tuple[Any, ...]:
        """What a FineTuneJob's plan reads of this Job besides its Pods: not its Pod counts, nor conditions other
        than Complete and Failed. A watch event that changes none of it changes no plan."""
        done = tuple((c.get("type"), c.get("reason"), c.get("message")) for c in self.conditions
                     if c.get("type") in ("Complete", "Failed") and c.get("status") == "True")
        return (self.name, self.stage, self.revision_key, self.spec_key, self.start_model, self.created, done,
                self.start_time, self.completion_time, self.suspended, self.queue)

    def _condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_ and c.get("status") == "True"), None)

    @property
    def complete(self) -> bool:
        return self._condition("Complete") is not None

    @property
    def failed_condition(self) -> Mapping[str, Any] | None:
        """The Job's Failed=True condition: it failed for good (retries exhausted, deadline, ...)."""
        return self._condition("Failed")

    def result_pod(self) -> PodState | None:
        """The Pod whose termination message tells the stage's outcome: the newest one that succeeded
        (complete Job) or terminated (otherwise)."""
        wanted = ("Succeeded",) if self.complete else ("Failed", "Succeeded")
        pods = [p for p in self.pods if p.phase in wanted]
        with_message = [p for p in pods if p.message] or pods
        return max(with_message, key=lambda p: (p.created, p.name), default=None)


@dataclass(frozen=True)
class DeploymentState:
    """The vLLM Deployment of a GPTModel, as far as rollout decisions need it."""

    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    generation: int = 1
    observed_generation: int = 0
    replicas: int = 1
    status_replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    conditions: tuple[Mapping[str, Any], ...] = ()

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)


@dataclass(frozen=True)
class ObservedFineTuneJob:
    """Everything plan_finetunejob reads besides the FineTuneJob itself."""

    now: str
    jobs: Mapping[str, JobState] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    model: GPTModel | None = None


@dataclass(frozen=True)
class ObservedGPTModel:
    """Everything plan_gptmodel reads besides the GPTModel itself."""

    now: str
    deployment: DeploymentState | None = None
    service: bool = False
    finetunejobs: tuple[FineTuneJob, ...] = ()
    """The FineTuneJobs whose spec.model names this GPTModel: the candidates for promotion."""
    monitor_jobs: tuple[JobState, ...] = ()
    """Its monitor Jobs (spec.monitoring), with their Pods."""
    serving_pods: tuple[str, ...] = ()
    """The /metrics URLs of its ready vLLM Pods (observed with spec.monitoring only)."""
    autoscaler: str | None = None
    """Its HorizontalPodAutoscaler's gptops.io/spec-hash ("" without one), or None when it has none."""
    artifacts_access_modes: tuple[str, ...] | None = None
    """The access modes of its spec.artifacts.pvc claim, or None when it names none or the claim is not found."""
    keda_prometheus: str | None = None
    """KEDA's ScaledObject CRD is installed: the Prometheus server a ScaledObject queries; None without KEDA."""
    scaled_object: str | None = None
    """Its KEDA ScaledObject's gptops.io/spec-hash ("" without one), or None when it has none."""

    def finetunejob(self, name: str) -> FineTuneJob | None:
        return next((f for f in self.finetunejobs if f.name == name), None)


def pod_state(pod: Mapping[str, Any]) -> PodState:
    """A PodState from a v1 Pod dict (camelCase, as the API returns it)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    message, reason, exit_code, waiting, waiting_message = "", "", None, "", ""
    for cs in status.get("containerStatuses") or ():
        if (w := (cs.get("state") or {}).get("waiting")) and not waiting:
            waiting, waiting_message = w.get("reason") or "", w.get("message") or ""
        terminated = ((cs.get("state") or {}).get("terminated")
                      or (cs.get("lastState") or {}).get("terminated"))
        if terminated:
            message = terminated.get("message") or message
            reason = terminated.get("reason") or reason
            exit_code = terminated.get("exitCode", exit_code)
            if message:
                break
    return PodState(
        name=meta.get("name", ""),
        phase=status.get("phase", ""),
        created=str(meta.get("creationTimestamp") or ""),
        message=message,
        reason=reason,
        exit_code=exit_code,
        waiting=waiting,
        waiting_message=waiting_message,
        unschedulable=next((c.get("message") or "no node fits" for c in status.get("conditions") or ()
                            if c.get("type") == "PodScheduled" and c.get("status") == "False"
                            and c.get("reason") == "Unschedulable"), ""),
        deleted=bool(meta.get("deletionTimestamp")),
    )


def job_state(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> JobState:
    """A JobState from a batch/v1 Job dict and the Pod dicts that belong to it."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = job.get("status") or {}
    name = meta.get("name", "")
    mine = [p for p in pods if any(((p.get("metadata") or {}).get("labels") or {}).get(k) == name
                                   for k in JOB_NAME_LABELS)]
    return JobState(
        name=name,
        stage=labels.get(LABEL_STAGE, ""),
        revision_key=labels.get(LABEL_REVISION_KEY, ""),
        spec_key=labels.get(LABEL_SPEC_KEY, ""),
        start_model=(meta.get("annotations") or {}).get(ANNOTATION_START_MODEL, ""),
        created=str(meta.get("creationTimestamp") or ""),
        conditions=tuple(_condition(c) for c in status.get("conditions") or ()),
        start_time=_str_or_none(status.get("startTime")),
        completion_time=_str_or_none(status.get("completionTime")),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        queue=labels.get(LABEL_KUEUE_QUEUE, ""),
        pods=tuple(pod_state(p) for p in mine),
    )


def with_pods(job: JobState, pods: Iterable[PodState]) -> JobState:
    """The same Job with these Pods (a watch cache holds Jobs and Pods apart)."""
    return replace(job, pods=tuple(sorted(pods, key=lambda p: (p.created, p.name))))


def deployment_state(deployment: Mapping[str, Any]) -> DeploymentState:
    """A DeploymentState from an apps/v1 Deployment dict."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    return DeploymentState(
        name=meta.get("name", ""),
        annotations=dict(meta.get("annotations") or {}),
        generation=int(meta.get("generation") or 1),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        status_replicas=int(status.get("replicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        conditions=tuple(status.get("conditions") or ()),
    )


def _condition(condition: Mapping[str, Any]) -> dict[str, Any]:
    """A Job's condition as a snapshot keeps it (a watch cache keeps one per Job): the fields a plan reads, their
    strings interned (every Job repeats the same types, reasons and messages)."""
    return {k: intern(v) if isinstance(v := condition[k], str) else v for k in CONDITION_FIELDS if k in condition}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
