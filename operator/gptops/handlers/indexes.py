"""What the passes observe, from kopf's watch caches (`@kopf.index`) instead of a LIST per pass: the stage Jobs, Pods
and Services of each FineTuneJob, the GPTModels, the FineTuneJobs of each GPTModel, and each GPTModel's Deployment,
Service and autoscaler. kopf fills every index from its watch before any handler runs, and updates an index before the handlers
of the same event, so a pass woken by a watch event sees that event.

The indexes hold small frozen snapshots (reconcile/observed.py), the parsed GPTModels (every FineTuneJob pass reads
one), and each FineTuneJob and GPTModel once, as compact JSON: not decoded API objects, nor a parsed FineTuneJob.
They live in kopf's event loop and are read here from the pass workers' threads; reads copy under a retry (a store
changing size during a copy raises, and the copy is taken again). Outside a running operator (unit tests) they are
unbound and the passes observe through cluster.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from sys import intern
from typing import Any, NamedTuple, TypeVar

import kopf

from gptops import cluster
from gptops.api.conditions import PASSED, TRUE, now_rfc3339
from gptops.api.constants import (
    ANNOTATION_SPEC_HASH,
    GROUP,
    LABEL_FINETUNEJOB,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    MANAGED_BY,
    PLURAL_FINETUNEJOB,
    PLURAL_GPTMODEL,
    VERSION,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel
from gptops.api.names import label_value
from gptops.builders import deployment_name
from gptops.reconcile.observed import (
    DeploymentState,
    JobState,
    ObservedFineTuneJob,
    ObservedGPTModel,
    PodState,
    deployment_state,
    job_state,
    pod_state,
    with_pods,
)
from gptops.reconcile.plan import Action, CreateChild

FTJ_CHILDREN = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_FINETUNEJOB: kopf.PRESENT}
MODEL_CHILDREN = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODEL: kopf.PRESENT}
#: What the API server sends of each child kind's watch (kopf's own label filters run after it has parsed each
#: event): the label filters of that kind's handlers here, the part they share. A Pod, Job, ... of the namespace that
#: gptops does not manage costs this operator nothing.
WATCH_SELECTORS = {
    ("batch", "v1", "jobs"): f"{LABEL_MANAGED_BY}={MANAGED_BY}",  # stage Jobs and monitor Jobs
    ("v1", "pods"): f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_FINETUNEJOB}",
    ("v1", "services"): f"{LABEL_MANAGED_BY}={MANAGED_BY}",  # stage Services and the GPTModels' Services
    ("apps", "v1", "deployments"): f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MODEL}",
    ("autoscaling", "v2", "horizontalpodautoscalers"): f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MODEL}",
}
NAMES = ("gptops_stage_jobs", "gptops_stage_pods", "gptops_stage_services", "gptops_models",
         "gptops_finetunejobs_by_model", "gptops_deployments", "gptops_model_services", "gptops_model_bodies",
         "gptops_finetunejob_bodies", "gptops_autoscalers")
BODIES = {PLURAL_GPTMODEL: "gptops_model_bodies", PLURAL_FINETUNEJOB: "gptops_finetunejob_bodies"}
T = TypeVar("T")

_bound: dict[str, Any] = {}
#: Jobs a pass created that the watch has not shown yet: (namespace, FineTuneJob label) -> {name: (when, Job)}.
#: The next pass sees them, so it neither creates them again nor announces them twice.
_created: dict[tuple[str, str], dict[str, tuple[float, JobState]]] = {}
_created_guard = threading.Lock()
#: Each object's last status write by a pass: (plural, namespace, name) -> (the resourceVersion it produced, the
#: one the watch showed when it returned, the object it returned while the watch has not shown it yet, compact).
_written: dict[tuple[str, str, str], tuple[str, str | None, CachedBody | None]] = {}
_written_guard = threading.Lock()
#: Seconds a created Job is assumed to exist without the watch showing it.
CREATED_GRACE = 30.0


def bind(indices: Mapping[str, Any]) -> None:
    """Remember the running operator's indexes (kopf passes them to every handler, the startup handler included)."""
    _bound.clear()
    _bound.update({name: indices[name] for name in NAMES if name in indices})


def unbind() -> None:
    _bound.clear()


def bound() -> bool:
    return len(_bound) == len(NAMES)


def _owners(meta: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(ref.get("uid", "") for ref in meta.get("ownerReferences") or ())


# --- the indexes (run in kopf's loop on every watch event of their resource) ------------------------------------


@kopf.index("batch", "v1", "jobs", labels=FTJ_CHILDREN, id="gptops_stage_jobs")
async def gptops_stage_jobs(namespace: str, labels: Mapping[str, str], meta: Mapping[str, Any], body: kopf.Body,
                      **_: Any) -> dict[tuple[str, str], tuple[frozenset[str], JobState]]:
    """(namespace, FineTuneJob label) -> (owner uids, the Job without its Pods)."""
    return {(namespace, labels[LABEL_FINETUNEJOB]): (_owners(meta), job_state(body))}


@kopf.index("", "v1", "pods", labels=FTJ_CHILDREN, id="gptops_stage_pods")
async def gptops_stage_pods(namespace: str, labels: Mapping[str, str], body: kopf.Body,
                      **_: Any) -> dict[tuple[str, str], tuple[str, PodState]]:
    """(namespace, FineTuneJob label) -> (its Job's name, the Pod)."""
    job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""
    return {(namespace, labels[LABEL_FINETUNEJOB]): (job, pod_state(body))}


@kopf.index("", "v1", "services", labels=FTJ_CHILDREN, id="gptops_stage_services")
async def gptops_stage_services(namespace: str, name: str, labels: Mapping[str, str], meta: Mapping[str, Any],
                          **_: Any) -> dict[tuple[str, str], tuple[frozenset[str], str]]:
    """(namespace, FineTuneJob label) -> (owner uids, the Service's name): the rendezvous of multi-node training."""
    return {(namespace, labels[LABEL_FINETUNEJOB]): (_owners(meta), name)}


@kopf.index(GROUP, VERSION, PLURAL_GPTMODEL, id="gptops_models")
async def gptops_models(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], GPTModel | None]:
    """(namespace, name) -> the parsed GPTModel (None when it does not parse)."""
    try:
        return {(namespace, name): GPTModel.from_dict(dict(body))}
    except ValueError:
        return {(namespace, name): None}


class ModelRun(NamedTuple):
    """What a GPTModel's event handler reads of one of its FineTuneJobs, to choose which to wake; a pass reads the
    FineTuneJob itself from the bodies' cache."""

    name: str
    valid: bool
    """It parses (a pass plans with it)."""
    passed: bool
    """Its Passed condition is True."""
    started: bool
    """Its current spec has started: the status is of this generation and names a revision and a prepare Job."""


@kopf.index(GROUP, VERSION, PLURAL_FINETUNEJOB, id="gptops_finetunejobs_by_model")
async def gptops_finetunejobs_by_model(namespace: str, name: str, spec: Mapping[str, Any], body: kopf.Body,
                                 **_: Any) -> dict[tuple[str, str], ModelRun]:
    """(namespace, spec.model.name) -> the FineTuneJob's name and the few facts the GPTModel's handler reads (the
    parsed model is not kept: a GPTModel pass parses its FineTuneJobs from gptops_finetunejob_bodies)."""
    model = (spec.get("model") or {}).get("name", "")
    try:
        ftj = FineTuneJob.from_dict(dict(body))
    except ValueError:
        return {(namespace, model): ModelRun(intern(name), False, False, False)}
    return {(namespace, model): ModelRun(intern(name), True, _passed(ftj), _started(ftj))}


@kopf.index("apps", "v1", "deployments", labels=MODEL_CHILDREN, id="gptops_deployments")
async def gptops_deployments(namespace: str, name: str, meta: Mapping[str, Any], body: kopf.Body,
                       **_: Any) -> dict[tuple[str, str], tuple[frozenset[str], DeploymentState]]:
    """(namespace, name) -> (owner uids, the Deployment)."""
    return {(namespace, name): (_owners(meta), deployment_state(body))}


@kopf.index("", "v1", "services", labels=MODEL_CHILDREN, id="gptops_model_services")
async def gptops_model_services(namespace: str, name: str, **_: Any) -> dict[tuple[str, str], bool]:
    """(namespace, name) -> True: the GPTModel's Service exists."""
    return {(namespace, name): True}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=MODEL_CHILDREN, id="gptops_autoscalers")
async def gptops_autoscalers(namespace: str, name: str, meta: Mapping[str, Any],
                             **_: Any) -> dict[tuple[str, str], tuple[frozenset[str], str]]:
    """(namespace, name) -> (owner uids, the spec-hash it was applied with)."""
    return {(namespace, name): (_owners(meta), (meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH, ""))}


class CachedBody(NamedTuple):
    """An object as the watch last showed it, stripped, kept as compact JSON (a decoded object takes about five
    times its JSON's size): one copy per object, decoded afresh for each pass that starts from it."""

    version: str | None
    """Its metadata.resourceVersion."""
    data: bytes

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CachedBody:
        kept = stripped(body)
        return cls(kept["metadata"].get("resourceVersion"), json.dumps(kept, separators=(",", ":")).encode())

    def load(self) -> dict[str, Any]:
        return json.loads(self.data)  # type: ignore[no-any-return]


@kopf.index(GROUP, VERSION, PLURAL_GPTMODEL, id="gptops_model_bodies")
async def gptops_model_bodies(namespace: str, name: str, body: kopf.Body,
                              **_: Any) -> dict[tuple[str, str], CachedBody]:
    """(namespace, name) -> the GPTModel as the watch last showed it (what a pass starts from), stripped."""
    return {(namespace, name): CachedBody.of(body)}


@kopf.index(GROUP, VERSION, PLURAL_FINETUNEJOB, id="gptops_finetunejob_bodies")
async def gptops_finetunejob_bodies(namespace: str, name: str, body: kopf.Body,
                                    **_: Any) -> dict[tuple[str, str], CachedBody]:
    """(namespace, name) -> the FineTuneJob as the watch last showed it (what a pass starts from), stripped."""
    return {(namespace, name): CachedBody.of(body)}


#: Annotations no pass reads, often the largest part of an object applied with `kubectl apply`.
UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def stripped(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object without what no pass reads (as controller-runtime's informers drop it): metadata.managedFields
    (it grows with every field manager: the API server's record of who wrote what) and the last-applied
    annotation. A copy: the watch's own event is left as it is."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in UNREAD_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in UNREAD_ANNOTATIONS}
    out["metadata"] = meta
    return out


# --- reading them (from the pass workers' threads) ----------------------------------------------------------


def _read(index: str, key: Any) -> list[Any]:
    """A copy of the values under `key` (empty when there are none)."""
    for _ in range(100):  # bounded: a copy fails only when the loop changes that store meanwhile
        try:
            store = _bound[index].get(key)
            return list(store) if store is not None else []
        except RuntimeError:
            continue
    raise kopf.TemporaryError(f"index {index} kept changing while read", delay=1)


def _first(values: list[T], keep: Callable[[T], bool] = lambda _: True) -> T | None:
    return next((v for v in values if keep(v)), None)


def note_created(actions: tuple[Action, ...], parent: Mapping[str, Any]) -> None:
    """Remember the Jobs a pass just created for a FineTuneJob, until the watch shows them."""
    jobs = [a.manifest for a in actions if isinstance(a, CreateChild) and a.manifest.get("kind") == "Job"]
    if not jobs or not bound():
        return
    meta = parent.get("metadata") or {}
    key = (meta.get("namespace", ""), label_value(meta.get("name", "")))
    with _created_guard:
        _created.setdefault(key, {}).update({j["metadata"]["name"]: (time.monotonic(), job_state(j)) for j in jobs})


def forget_created(namespace: str, name: str) -> None:
    """Drop what was remembered for a deleted FineTuneJob."""
    with _created_guard:
        _created.pop((namespace, label_value(name)), None)


def _just_created(key: tuple[str, str], seen: Mapping[str, JobState]) -> dict[str, JobState]:
    """The Jobs created for `key` that the watch does not show yet (and forget those it shows, or too old)."""
    now = time.monotonic()
    with _created_guard:
        mine = _created.get(key)
        if not mine:
            return {}
        for name in [n for n, (when, _) in mine.items() if n in seen or now - when > CREATED_GRACE]:
            del mine[name]
        if not mine:
            del _created[key]
        return {n: job for n, (_, job) in mine.items()}


def observe_finetunejob(ftj: FineTuneJob) -> ObservedFineTuneJob:
    """The stage Jobs (with their Pods), Services and the GPTModel of a FineTuneJob, from the watch caches."""
    if not bound():
        return cluster.observe_finetunejob(ftj)
    key = (ftj.namespace, label_value(ftj.name))
    uid = ftj.metadata.uid
    pods = _read("gptops_stage_pods", key)
    jobs = {job.name: with_pods(job, [p for owner, p in pods if owner == job.name])
            for owners, job in _read("gptops_stage_jobs", key) if uid in owners}
    jobs.update(_just_created(key, jobs))
    services = frozenset(name for owners, name in _read("gptops_stage_services", key) if uid in owners)
    return ObservedFineTuneJob(now=now_rfc3339(), jobs=jobs, services=services, model=model(ftj.namespace,
                                                                                           ftj.spec.model.name))


def model(namespace: str, name: str) -> GPTModel | None:
    """The GPTModel as the watch last showed it, or None."""
    return _first(_read("gptops_models", (namespace, name)), lambda m: m is not None)


def observe_gptmodel(gm: GPTModel) -> ObservedGPTModel:
    """The vLLM Deployment and Service of a GPTModel and the FineTuneJobs that name it, from the watch caches."""
    if not bound():
        return cluster.observe_gptmodel(gm)
    ns, name = gm.namespace, deployment_name(gm)
    found = _first(_read("gptops_deployments", (ns, name)))
    if found is not None and gm.metadata.uid not in found[0]:
        raise kopf.PermanentError(f"Deployment {ns}/{name} exists and is not owned by GPTModel {gm.name}")
    autoscaler = _first(_read("gptops_autoscalers", (ns, name)), lambda a: gm.metadata.uid in a[0])
    # Monitor Jobs and the vLLM Pods are read from the API, and only for a GPTModel with spec.monitoring.
    monitor_jobs, serving_pods = cluster.observe_monitoring(gm, found is not None)
    keda = cluster.observe_keda(gm)  # KEDA's CRD may come and go: read, not watched
    return ObservedGPTModel(
        now=now_rfc3339(),
        deployment=found[1] if found else None,
        service=bool(_read("gptops_model_services", (ns, name))),
        finetunejobs=tuple(sorted((f for r in _read("gptops_finetunejobs_by_model", (ns, gm.name)) if r.valid
                                   if (f := _finetunejob(ns, r.name)) is not None), key=lambda f: f.name)),
        monitor_jobs=monitor_jobs,
        serving_pods=serving_pods,
        autoscaler=autoscaler[1] if autoscaler else None,
        artifacts_access_modes=cluster.observe_artifacts_claim(gm),
        keda_prometheus=keda[0],
        scaled_object=keda[1],
    )


def finetunejobs_of(namespace: str, model_name: str) -> list[str]:
    """The names of the FineTuneJobs in `namespace` whose spec.model is `model_name`."""
    if not bound():
        return cluster.finetunejobs_of(namespace, model_name)
    return sorted(r.name for r in _read("gptops_finetunejobs_by_model", (namespace, model_name)))


def finetunejobs_reading_serving(namespace: str, model_name: str, revisions: set[str]) -> list[str]:
    """The FineTuneJobs of a GPTModel whose plan reads what it serves, after that changed: those named by the
    revisions served or kept for rollback before or after (they keep their Jobs and files), those that passed (their
    promotion), and those whose current spec has not started (a revision may start from what is served)."""
    if not bound():
        return cluster.finetunejobs_of(namespace, model_name)
    return sorted(r.name for r in _read("gptops_finetunejobs_by_model", (namespace, model_name))
                  if not r.valid or r.name in revisions or r.passed or not r.started)


def _finetunejob(namespace: str, name: str) -> FineTuneJob | None:
    """The FineTuneJob as the watch last showed it, parsed; None when it is gone or does not parse."""
    cached = _first(_read("gptops_finetunejob_bodies", (namespace, name)))
    if cached is None:
        return None
    try:
        return FineTuneJob.from_dict(cached.load())
    except ValueError:
        return None


def _passed(ftj: FineTuneJob) -> bool:
    return any(c.type == PASSED and c.status == TRUE for c in ftj.status.conditions)


def _started(ftj: FineTuneJob) -> bool:
    status = ftj.status
    return (status.observed_generation == ftj.metadata.generation and bool(status.artifacts.revision)
            and bool(status.stages.prepare and status.stages.prepare.job_name))


def current_body(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object a pass starts from: the watch's copy when it holds the status the last pass wrote (or no pass
    wrote one yet); the object that write returned while the watch still shows what it showed before the write (it
    shows each change in order, so nothing newer has come); else a fresh GET. None when it is gone."""
    if bound():
        cached = _first(_read(BODIES[plural], (namespace, name)))
        version = cached.version if cached is not None else None
        key = (plural, namespace, name)
        with _written_guard:
            written = _written.get(key)
            if cached is not None and (written is None or written[0] == version):
                if written is not None and written[2] is not None:
                    _written[key] = (written[0], None, None)  # the watch caught up: keep no copy
                return cached.load()
            if written is not None and written[2] is not None and version == written[1]:
                return written[2].load()
    return cluster.get_object(plural, namespace, name)


def note_written(plural: str, namespace: str, name: str, written: Mapping[str, Any] | None) -> None:
    """Remember the resourceVersion a status write produced, what the watch showed then, and the object the write
    returned (None: the object is gone)."""
    if not bound():
        return
    version = ((written or {}).get("metadata") or {}).get("resourceVersion")
    cached = _first(_read(BODIES[plural], (namespace, name)))
    seen = cached.version if cached is not None else None
    with _written_guard:
        if version and written is not None:
            _written[(plural, namespace, name)] = (version, seen, CachedBody.of(written) if seen != version else None)
        else:
            _written.pop((plural, namespace, name), None)


def forget_written(plural: str, namespace: str, name: str) -> None:
    with _written_guard:
        _written.pop((plural, namespace, name), None)
