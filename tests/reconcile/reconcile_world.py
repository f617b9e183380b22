"""A small in-memory world for the planner tests: the two kinds, their children, and applying a Plan to it the way
cluster.py and the handlers would (create children, promote, merge the status patch)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Any

from gptops.api import FineTuneJob, GPTModel
from gptops.reconcile import (
    ApplyChild,
    CreateChild,
    DeleteChild,
    DeploymentState,
    JobState,
    ObservedFineTuneJob,
    ObservedGPTModel,
    Plan,
    PodState,
    plan_finetunejob,
    plan_gptmodel,
)

NOW = "2026-01-01T00:00:00Z"

GPTMODEL = {
    "apiVersion": "gptops.io/v1alpha1",
    "kind": "GPTModel",
    "metadata": {"name": "tiny", "namespace": "ml", "uid": "uid-gm", "generation": 1},
    "spec": {
        "source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
        "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
        "serving": {"rolloutDeadlineSeconds": 60},
    },
}

FINETUNEJOB = {
    "apiVersion": "gptops.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tiny-ft", "namespace": "ml", "uid": "uid-ftj", "generation": 3},
    "spec": {
        "model": {"name": "tiny"},
        "dataset": {"source": {"pvc": {"claimName": "data", "path": "corpus.jsonl"}}},
        "evaluation": {"thresholds": {"maxPerplexity": 50, "minPerplexityImprovement": 0.1}, "promote": True},
    },
}


def stage_result(stage: str, ok: bool = True, message: str = "", **extra: Any) -> str:
    """A termination message as the pipeline writes it."""
    return json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": ok,
                       "message": message or f"{stage} done", **extra})


def passed_finetunejob(name: str, *, passed_at: str = NOW, promote: bool = False,
                       training: dict[str, Any] | None = None, artifacts: dict[str, Any] | None = None,
                       passed: str = "True") -> dict[str, Any]:
    """A FineTuneJob of GPTMODEL whose current revision finished and whose gate decided (`passed`), as its own pass
    records it: the candidates and pins the GPTModel pass observes."""
    root = f"/artifacts/ml/{name}/0123456789"
    return {
        "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ml", "generation": 1},
        "spec": {"model": {"name": "tiny"}, "dataset": {"source": {"pvc": {"claimName": "d", "path": "x"}}},
                 "training": training or {}, "evaluation": {"promote": promote}},
        "status": {"observedGeneration": 1,
                   "conditions": [{"type": "Trained", "status": "True", "reason": "JobSucceeded"},
                                  {"type": "Passed", "status": passed, "reason": "ThresholdsMet",
                                   "observedGeneration": 1, "lastTransitionTime": passed_at}],
                   "artifacts": {"revision": "0123456789", "directory": root, "digest": f"sha256:{name}",
                                 **(artifacts or {})}},
    }


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch, as the API server applies kopf's status patches."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class World:
    """The two objects as the API server holds them, and the children the operator made."""

    model: dict[str, Any] | None
    ftj: dict[str, Any]
    now: str = NOW
    jobs: dict[str, JobState] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    deployment: DeploymentState | None = None
    deployment_manifest: dict[str, Any] | None = None
    _created: int = 0
    finetunejobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Other FineTuneJobs of the GPTModel (the one in `ftj` is always observed too)."""
    serving_pods: tuple[str, ...] = ()
    """/metrics URLs of the ready vLLM Pods."""
    autoscaler: dict[str, Any] | None = None
    """The HorizontalPodAutoscaler the operator applied."""
    artifacts_access_modes: tuple[str, ...] | None = None
    """The access modes of the artifacts claim (None: not found)."""
    keda_prometheus: str | None = None
    """Set when KEDA's CRDs are installed: the Prometheus server its ScaledObjects query."""
    scaled_object: dict[str, Any] | None = None
    """The KEDA ScaledObject the operator applied."""

    # --- observing ---
    def observe_ftj(self) -> ObservedFineTuneJob:
        return ObservedFineTuneJob(
            now=self.now, jobs=dict(self.jobs), services=frozenset(self.services),
            model=GPTModel.from_dict(self.model) if self.model else None,
        )

    def observe_model(self) -> ObservedGPTModel:
        assert self.model is not None
        ftjs = {self.ftj["metadata"]["name"]: self.ftj, **self.finetunejobs}
        return ObservedGPTModel(now=self.now, deployment=self.deployment, service=bool(self.services),
                                finetunejobs=tuple(FineTuneJob.from_dict(f) for f in ftjs.values()),
                                monitor_jobs=tuple(j for j in self.jobs.values() if j.stage == "monitor"),
                                serving_pods=self.serving_pods,
                                autoscaler=None if self.autoscaler is None else
                                self.autoscaler["metadata"]["annotations"].get("gptops.io/spec-hash", ""),
                                artifacts_access_modes=self.artifacts_access_modes,
                                keda_prometheus=self.keda_prometheus,
                                scaled_object=None if self.scaled_object is None else
                                self.scaled_object["metadata"]["annotations"].get("gptops.io/spec-hash", ""))

    def job(self, stage: str) -> str:
        """The name of the current revision's Job of `stage` (the newest of that stage the operator created)."""
        mine = [j for j in self.jobs.values() if j.stage == stage]
        assert mine, f"no {stage} Job yet"
        return max(mine, key=lambda j: (j.created, j.name)).name

    # --- planning ---
    def plan_ftj(self) -> Plan:
        return plan_finetunejob(FineTuneJob.from_dict(self.ftj), self.observe_ftj())

    def plan_model(self) -> Plan:
        assert self.model is not None
        return plan_gptmodel(GPTModel.from_dict(self.model), self.observe_model())

    # --- applying, as cluster.py and the handler do ---
    def apply_ftj(self, plan: Plan) -> None:
        self._apply(plan)
        self.ftj["status"] = merge_patch(self.ftj.get("status") or {}, plan.status)

    def apply_model(self, plan: Plan) -> None:
        self._apply(plan)
        assert self.model is not None
        self.model["status"] = merge_patch(self.model.get("status") or {}, plan.status)

    def _apply(self, plan: Plan) -> None:
        for action in plan.changes:
            if isinstance(action, CreateChild | ApplyChild):
                self._create(action.manifest)
            elif isinstance(action, DeleteChild) and action.kind == "HorizontalPodAutoscaler":
                self.autoscaler = None
            elif isinstance(action, DeleteChild) and action.kind == "ScaledObject":
                self.scaled_object = None
            elif isinstance(action, DeleteChild):
                self.jobs.pop(action.name, None)

    def _create(self, manifest: dict[str, Any]) -> None:
        name, kind = manifest["metadata"]["name"], manifest["kind"]
        if kind == "Job":
            meta = manifest["metadata"]
            labels = meta["labels"]
            self._created += 1
            self.jobs.setdefault(name, JobState(
                name=name, stage=labels["gptops.io/stage"], revision_key=labels["gptops.io/revision-key"],
                spec_key=labels.get("gptops.io/spec-key", ""),
                start_model=(meta.get("annotations") or {}).get("gptops.io/start-model", ""),
                created=f"{self.now}#{self._created:04d}", suspended=bool(manifest["spec"].get("suspend")),
                queue=labels.get("kueue.x-k8s.io/queue-name", ""), active=0 if manifest["spec"].get("suspend") else 1,
                start_time=None if manifest["spec"].get("suspend") else self.now))
        elif kind == "Service":
            self.services.add(name)
        elif kind == "HorizontalPodAutoscaler":
            self.autoscaler = copy.deepcopy(manifest)
        elif kind == "ScaledObject":
            self.scaled_object = copy.deepcopy(manifest)
        elif kind == "Deployment":
            dep = self.deployment
            if dep and self.deployment_manifest and self.deployment_manifest["spec"] == manifest["spec"]:
                # Only metadata changed. A Deployment's annotations are part of its generation (the controller
                # copies them to its ReplicaSet), which the controller observes at once: nothing else to do.
                self.deployment_manifest = copy.deepcopy(manifest)
                annotations = dict(manifest["metadata"].get("annotations") or {})
                if annotations != dep.annotations:
                    current = dep.observed_generation >= dep.generation
                    dep = replace(dep, generation=dep.generation + 1,
                                  observed_generation=dep.generation + 1 if current else dep.observed_generation)
                self.deployment = replace(dep, annotations=annotations)
                return
            generation = (dep.generation + 1) if dep else 1
            self.deployment_manifest = copy.deepcopy(manifest)
            self.deployment = DeploymentState(
                name=name, annotations=dict(manifest["metadata"].get("annotations") or {}), generation=generation,
                observed_generation=dep.observed_generation if dep else 0,
                # Without replicas in the manifest (an autoscaler owns them) the live count stays; 1 when created.
                replicas=manifest["spec"].get("replicas", dep.replicas if dep else 1),
                status_replicas=dep.status_replicas if dep else 0,
                updated_replicas=0, ready_replicas=dep.ready_replicas if dep else 0,
                available_replicas=dep.available_replicas if dep else 0,
                conditions=dep.conditions if dep else (),
            )

    # --- what the Job and Deployment controllers (and kwok) do ---
    def admit(self, name: str) -> None:
        """What Kueue does when quota admits a queued Job: it unsuspends it, and the Job controller starts its Pods."""
        self.jobs[name] = replace(self.jobs[name], suspended=False, active=1, start_time=self.now)

    def finish_job(self, name: str, message: str, *, ok: bool = True, job_reason: str = "BackoffLimitExceeded") -> None:
        job = self.jobs[name]
        pod = PodState(name=f"{name}-abcde", phase="Succeeded" if ok else "Failed", created=self.now,
                       message=message, exit_code=0 if ok else 1)
        if ok:
            cond = {"type": "Complete", "status": "True"}
        else:
            cond = {"type": "Failed", "status": "True", "reason": job_reason,
                    "message": "Job has reached the specified backoff limit"}
        self.jobs[name] = replace(job, active=0, succeeded=int(ok), failed=int(not ok), conditions=(cond,),
                                  start_time=self.now, completion_time=self.now if ok else None, pods=(pod,))

    def roll_out(self) -> None:
        """The Deployment controller finished the rollout: every replica new and available."""
        dep = self.deployment
        assert dep is not None
        self.deployment = replace(
            dep, observed_generation=dep.generation, status_replicas=dep.replicas, updated_replicas=dep.replicas,
            ready_replicas=dep.replicas, available_replicas=dep.replicas,
            conditions=({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}),
        )

    def stall(self) -> None:
        """The Deployment controller gave up on the rollout (progressDeadlineSeconds passed)."""
        dep = self.deployment
        assert dep is not None
        self.deployment = replace(
            dep, observed_generation=dep.generation, updated_replicas=1, status_replicas=dep.replicas + 1,
            conditions=({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                         "message": 'ReplicaSet "tiny-7d9" has timed out progressing.'}),
        )


def settle(world: World, which: str, *, passes: int = 4) -> Plan:
    """Plan and apply until a pass changes nothing; asserts it converges, returns the last (empty) plan."""
    plan_of, apply = (world.plan_ftj, world.apply_ftj) if which == "ftj" else (world.plan_model, world.apply_model)
    for _ in range(passes):
        plan = plan_of()
        if not plan.actions and _status_of(world, which) == merge_patch(_status_of(world, which), plan.status):
            return plan
        apply(plan)
    raise AssertionError(f"{which} did not settle in {passes} passes; last plan: {plan}")


def _status_of(world: World, which: str) -> dict[str, Any]:
    obj = world.ftj if which == "ftj" else world.model
    assert obj is not None
    return obj.get("status") or {}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}
