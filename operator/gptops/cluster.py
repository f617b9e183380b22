"""The one module that talks to the Kubernetes API: observe a resource's children, apply planned actions, post
events. Objects travel as plain camelCase dicts (raw JSON), never as generated client models."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from gptops.api.conditions import now_rfc3339
from gptops.api.constants import (
    ANNOTATION_SPEC_HASH,
    GROUP,
    KEDA_GROUP,
    KEDA_KIND,
    KEDA_PLURAL,
    KEDA_VERSION,
    LABEL_FINETUNEJOB,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_STAGE,
    MANAGED_BY,
    PLURAL_FINETUNEJOB,
    PLURAL_GPTMODEL,
    STAGE_MONITOR,
    VERSION,
    VLLM_PORT,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel
from gptops.api.names import label_value
from gptops.builders import deployment_name
from gptops.builders.deployment import server_selector
from gptops.reconcile.observed import (
    JobState,
    ObservedFineTuneJob,
    ObservedGPTModel,
    deployment_state,
    job_state,
)
from gptops.reconcile.plan import Action, ApplyChild, CreateChild, DeleteChild, EmitEvent

log = logging.getLogger(__name__)

FIELD_MANAGER = "gptops"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
#: Seconds before a single API request gives up (kopf retries the handler).
REQUEST_TIMEOUT = 30

_lock = threading.Lock()
_api: k8s.ApiClient | None = None


def configure(kubeconfig: str | None = None, pool_size: int = 4) -> None:
    """Connect to the cluster: in-cluster credentials when running in a Pod, else the kubeconfig. `pool_size`
    connections are kept open (one per thread that calls at once; more would be opened and closed per request)."""
    global _api, _keda_checked
    _keda_checked = None  # a new connection, maybe another cluster: ask again whether KEDA is installed
    with _claims_lock:
        _claims.clear()
    with _lock:
        configuration = k8s.Configuration()
        loaded = False
        if kubeconfig is None:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
                loaded = True
            except k8s_config.ConfigException:
                pass
        if not loaded:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        _api = k8s.ApiClient(configuration)


def api_client() -> k8s.ApiClient:
    """The shared ApiClient (configured on first use)."""
    if _api is None:
        configure()
    assert _api is not None
    return _api


def _raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated client method and return the JSON body as a dict."""
    response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    return json.loads(response.data or b"{}")


def _get_or_none(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    try:
        return _raw(call, *args, **kwargs)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


# --- observing ----------------------------------------------------------------------------------------------


def observe_finetunejob(ftj: FineTuneJob) -> ObservedFineTuneJob:
    """The stage Jobs (with their Pods), Services and the GPTModel of a FineTuneJob."""
    api = api_client()
    batch, core, custom = k8s.BatchV1Api(api), k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns = ftj.namespace
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_FINETUNEJOB}={label_value(ftj.name)}"
    jobs = _owned(_raw(batch.list_namespaced_job, ns, label_selector=selector)["items"], ftj.metadata.uid)
    pods = _raw(core.list_namespaced_pod, ns, label_selector=selector)["items"]
    services = _owned(_raw(core.list_namespaced_service, ns, label_selector=selector)["items"], ftj.metadata.uid)
    model = _get_or_none(custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL_GPTMODEL,
                         ftj.spec.model.name)
    return ObservedFineTuneJob(
        now=now_rfc3339(),
        jobs={j["metadata"]["name"]: job_state(j, pods) for j in jobs},
        services=frozenset(s["metadata"]["name"] for s in services),
        model=GPTModel.from_dict(model) if model else None,
    )


def observe_gptmodel(model: GPTModel) -> ObservedGPTModel:
    """The vLLM Deployment and Service of a GPTModel, and the FineTuneJobs that name it (the promotion candidates
    and the pinned one)."""
    api = api_client()
    apps, core, custom = k8s.AppsV1Api(api), k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns, name = model.namespace, deployment_name(model)
    deployment = _get_or_none(apps.read_namespaced_deployment, name, ns)
    if deployment is not None and not _owned([deployment], model.metadata.uid):
        raise kopf.PermanentError(f"Deployment {ns}/{name} exists and is not owned by GPTModel {model.name}")
    service = _get_or_none(core.read_namespaced_service, name, ns)
    monitor_jobs, serving_pods = observe_monitoring(model, deployment is not None)
    autoscaler = _get_or_none(k8s.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler, name, ns)
    keda = observe_keda(model)
    return ObservedGPTModel(
        now=now_rfc3339(),
        deployment=deployment_state(deployment) if deployment else None,
        service=service is not None,
        finetunejobs=tuple(_parsed_finetunejobs(_finetunejob_items(custom, ns, model.name))),
        monitor_jobs=monitor_jobs,
        serving_pods=serving_pods,
        autoscaler=None if autoscaler is None else
        ((autoscaler.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH, ""),
        artifacts_access_modes=observe_artifacts_claim(model),
        keda_prometheus=keda[0],
        scaled_object=keda[1],
    )


#: The Prometheus server KEDA's ScaledObjects query for vLLM's waiting requests (the chart sets it).
KEDA_PROMETHEUS_ENV = "GPTOPS_KEDA_PROMETHEUS_URL"
KEDA_PROMETHEUS_DEFAULT = "http://prometheus-operated.monitoring.svc:9090"
#: How long the answer to "is KEDA installed?" is kept: installing KEDA later is noticed within this many seconds.
KEDA_CHECK_SECONDS = 60.0
_keda_checked: tuple[float, bool] | None = None
_keda_lock = threading.Lock()


def keda_installed() -> bool:
    """Whether the API server serves KEDA's ScaledObject (keda.sh/v1alpha1 scaledobjects, from the CRD
    scaledobjects.keda.sh): API discovery, which every authenticated client may read, at most once a minute."""
    global _keda_checked
    with _keda_lock:
        if _keda_checked is not None and time.monotonic() - _keda_checked[0] < KEDA_CHECK_SECONDS:
            return _keda_checked[1]
    found = _get_or_none(k8s.CustomObjectsApi(api_client()).get_api_resources, KEDA_GROUP, KEDA_VERSION)
    installed = any(r.get("name") == KEDA_PLURAL for r in (found or {}).get("resources") or ())
    with _keda_lock:
        _keda_checked = (time.monotonic(), installed)
    return installed


def observe_keda(model: GPTModel) -> tuple[str | None, str | None]:
    """(the Prometheus URL a ScaledObject queries when KEDA is installed, else None; the gptops.io/spec-hash of the
    GPTModel's ScaledObject ("" without one), or None when it has none)."""
    if not keda_installed():
        return None, None
    found = _get_or_none(k8s.CustomObjectsApi(api_client()).get_namespaced_custom_object, KEDA_GROUP, KEDA_VERSION,
                         model.namespace, KEDA_PLURAL, deployment_name(model))
    scaled = None if found is None else ((found.get("metadata") or {}).get("annotations") or {}).get(
        ANNOTATION_SPEC_HASH, "")
    return os.environ.get(KEDA_PROMETHEUS_ENV) or KEDA_PROMETHEUS_DEFAULT, scaled


#: Seconds a claim's access modes are reused without a GET. They cannot change while the claim exists (a claim's
#: accessModes are immutable); this bounds how late a claim deleted and made again with others is noticed.
CLAIM_CHECK_SECONDS = 30.0
_claims: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
_claims_lock = threading.Lock()


def observe_artifacts_claim(model: GPTModel) -> tuple[str, ...] | None:
    """The access modes of the GPTModel's artifacts claim (a GET, only when the spec names one, at most once per
    CLAIM_CHECK_SECONDS per claim while it exists), or None when it names none or the claim is not there (yet)."""
    claim = model.spec.artifacts.pvc
    if claim is None:
        return None
    key, now = (model.namespace, claim.claim_name), time.monotonic()
    with _claims_lock:
        known = _claims.get(key)
    if known is not None and now - known[0] < CLAIM_CHECK_SECONDS:
        return known[1]
    pvc = _get_or_none(k8s.CoreV1Api(api_client()).read_namespaced_persistent_volume_claim, claim.claim_name,
                       model.namespace)
    with _claims_lock:
        if pvc is None:
            _claims.pop(key, None)
            return None
        modes = tuple((pvc.get("spec") or {}).get("accessModes") or ())
        _claims[key] = (now, modes)
    return modes


def observe_monitoring(model: GPTModel, deployed: bool) -> tuple[tuple[JobState, ...], tuple[str, ...]]:
    """(its monitor Jobs with their Pods, the /metrics URLs of its ready vLLM Pods): read only for a GPTModel with
    spec.monitoring (or a monitoring status still to clear), so the others cost no request."""
    monitor_jobs: tuple[JobState, ...] = ()
    serving_pods: tuple[str, ...] = ()
    if model.spec.monitoring is None and model.status.monitoring is None:
        return monitor_jobs, serving_pods
    api = api_client()
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    ns = model.namespace
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_STAGE}={STAGE_MONITOR}"
    jobs = _owned(_raw(batch.list_namespaced_job, ns, label_selector=f"{selector},{LABEL_MODEL}="
                       f"{label_value(model.name)}")["items"], model.metadata.uid)
    pods = _raw(core.list_namespaced_pod, ns, label_selector=selector)["items"] if jobs else []
    monitor_jobs = tuple(job_state(j, pods) for j in jobs)
    if model.spec.monitoring is not None and deployed:
        serving_pods = _metrics_urls(core, ns, server_selector(model))
    return monitor_jobs, serving_pods


def _metrics_urls(core: k8s.CoreV1Api, namespace: str, match: Mapping[str, str]) -> tuple[str, ...]:
    """http://<Pod IP>:8000/metrics of each ready Pod of the vLLM Deployment (a monitor run reads them all)."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
    if not selector:
        return ()
    urls = []
    for pod in _raw(core.list_namespaced_pod, namespace, label_selector=selector)["items"]:
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        owned = any(ref.get("kind") == "ReplicaSet" for ref in (pod.get("metadata") or {}).get("ownerReferences") or ())
        if ready and owned and status.get("podIP"):
            urls.append(f"http://{status['podIP']}:{VLLM_PORT}/metrics")
    return tuple(sorted(urls))


def _finetunejob_items(custom: k8s.CustomObjectsApi, namespace: str, model: str) -> list[dict[str, Any]]:
    items = _raw(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL_FINETUNEJOB)["items"]
    return [i for i in items if ((i.get("spec") or {}).get("model") or {}).get("name") == model]


def _parsed_finetunejobs(items: list[dict[str, Any]]) -> list[FineTuneJob]:
    """The FineTuneJobs that parse; one that does not (a spec older than these models) cannot be a candidate."""
    out = []
    for item in items:
        try:
            out.append(FineTuneJob.from_dict(item))
        except ValueError:
            log.warning("Skipping unreadable FineTuneJob name=%s", (item.get("metadata") or {}).get("name"))
    return out


def _owned(items: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """Only children whose controller owner is this very object (not a deleted namesake)."""
    return [i for i in items
            if any(ref.get("uid") == uid for ref in i.get("metadata", {}).get("ownerReferences") or ())]


# --- applying -----------------------------------------------------------------------------------------------


def apply(actions: tuple[Action, ...], body: Mapping[str, Any]) -> frozenset[str]:
    """Carry out a plan's actions in order, on behalf of the object `body` (for events); returns the children
    ("Kind/name") that a CreateChild found already there. An event announcing such a child is not posted."""
    existed: set[str] = set()
    for action in actions:
        if isinstance(action, CreateChild):
            if not create(action.manifest):
                existed.add(f"{action.manifest['kind']}/{action.manifest['metadata']['name']}")
        elif isinstance(action, ApplyChild):
            server_side_apply(action.manifest)
        elif isinstance(action, DeleteChild):
            delete(action)
        elif isinstance(action, EmitEvent) and action.child not in existed:
            post_event(body, action)
    return frozenset(existed)


def event_subject(body: Mapping[str, Any]) -> dict[str, Any]:
    """All post_event reads of an object: an Event waiting to be posted keeps this, not the whole object."""
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": body.get("kind", ""),
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")}}


def post_event(body: Mapping[str, Any], event: EmitEvent) -> None:
    """Record an event on `body` through the API (any thread: no kopf handler context is needed)."""
    meta = body["metadata"]
    stamp = now_rfc3339()
    manifest = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": body.get("kind", ""),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": "gptops"},
        "reportingComponent": "gptops.io/operator",
        "reportingInstance": "gptops",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        _raw(k8s.CoreV1Api(api_client()).create_namespaced_event, meta["namespace"], manifest)
    except ApiException as err:  # an event is best effort: never fail a pass over it
        log.warning("Could not post event reason=%s name=%s status=%s", event.reason, meta["name"], err.status)


def create(manifest: dict[str, Any]) -> bool:
    """Create a child; AlreadyExists (409) means an earlier pass did it, which is success (False: not created now)."""
    api = api_client()
    kind, ns, name = manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    calls = {
        "Job": k8s.BatchV1Api(api).create_namespaced_job,
        "Service": k8s.CoreV1Api(api).create_namespaced_service,
        "Deployment": k8s.AppsV1Api(api).create_namespaced_deployment,
    }
    try:
        _raw(calls[kind], ns, manifest, field_manager=FIELD_MANAGER)
        log.info("Created %s namespace=%s name=%s", kind, ns, name)
        return True
    except ApiException as err:
        if err.status != 409:
            raise
        return False


def server_side_apply(manifest: dict[str, Any]) -> None:
    """Server-side apply as the `gptops` field manager: fields this manager set before and left out now go."""
    api = api_client()
    kind, ns, name = manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    calls = {
        "Deployment": k8s.AppsV1Api(api).patch_namespaced_deployment,
        "Service": k8s.CoreV1Api(api).patch_namespaced_service,
        "HorizontalPodAutoscaler": k8s.AutoscalingV2Api(api).patch_namespaced_horizontal_pod_autoscaler,
    }
    if kind == KEDA_KIND:
        _raw(k8s.CustomObjectsApi(api).patch_namespaced_custom_object, KEDA_GROUP, KEDA_VERSION, ns, KEDA_PLURAL,
             name, manifest, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
    else:
        _raw(calls[kind], name, ns, manifest, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
    log.info("Applied %s namespace=%s name=%s", kind, ns, name)


def delete(action: DeleteChild) -> None:
    """Delete a child and, in the background, what it owns; NotFound (404) means it is already gone."""
    api = api_client()
    calls = {"Job": k8s.BatchV1Api(api).delete_namespaced_job,
             "HorizontalPodAutoscaler": k8s.AutoscalingV2Api(api).delete_namespaced_horizontal_pod_autoscaler}
    if action.kind == KEDA_KIND:
        calls[KEDA_KIND] = partial(k8s.CustomObjectsApi(api).delete_namespaced_custom_object, KEDA_GROUP,
                                   KEDA_VERSION, action.namespace, KEDA_PLURAL)
    try:
        if action.kind == KEDA_KIND:
            _raw(calls[action.kind], action.name, propagation_policy="Background")
        else:
            _raw(calls[action.kind], action.name, action.namespace, propagation_policy="Background")
        log.info("Deleted %s namespace=%s name=%s", action.kind, action.namespace, action.name)
    except ApiException as err:
        if err.status != 404:
            raise


# --- the kinds themselves -----------------------------------------------------------------------------------


def get_object(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A GPTModel or FineTuneJob as a dict, or None when it is gone."""
    custom = k8s.CustomObjectsApi(api_client())
    return _get_or_none(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)


def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch the status subresource; returns the object as written, or None when it is gone."""
    custom = k8s.CustomObjectsApi(api_client())
    try:
        return _raw(custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural, name,
                    {"status": status}, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH)
    except ApiException as err:
        if err.status != 404:  # deleted meanwhile
            raise
        return None


def finetunejobs_of(namespace: str, model: str) -> list[str]:
    """The names of the FineTuneJobs in `namespace` whose spec.model is `model`."""
    items = _finetunejob_items(k8s.CustomObjectsApi(api_client()), namespace, model)
    return sorted(i["metadata"]["name"] for i in items)


# --- gptops status: a person's view through their kubeconfig ----------------------------------------------------


def list_objects(plural: str, namespace: str | None) -> list[dict[str, Any]]:
    """The GPTModels or FineTuneJobs in `namespace`, or in every namespace when it is None."""
    custom = k8s.CustomObjectsApi(api_client())
    if namespace is None:
        return _raw(custom.list_cluster_custom_object, GROUP, VERSION, plural)["items"]
    return _raw(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural)["items"]


def current_namespace() -> str:
    """The namespace of the kubeconfig's current context, else `default`."""
    try:
        _, current = k8s_config.list_kube_config_contexts()
        return (current.get("context") or {}).get("namespace") or "default"
    except (k8s_config.ConfigException, OSError, TypeError):
        return "default"
