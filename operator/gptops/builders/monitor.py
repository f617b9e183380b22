"""The monitor Job of a GPTModel: `python -m gptops.pipeline monitor` in the trainer image, against the GPTModel's
own Service, reading the vLLM Pods' /metrics. Pure: returns dicts; imports gptops.api only."""

from __future__ import annotations

import json
from typing import Any

from gptops.api.artifacts import ServedRevision
from gptops.api.constants import (
    API_VERSION,
    ARTIFACTS_MOUNT,
    LABEL_MODEL,
    STAGE_MONITOR,
    TERMINATION_LOG,
    VLLM_PORT,
    fixed_labels,
)
from gptops.api.gptmodel import GPTModel
from gptops.api.names import child_name
from gptops.builders.common import (
    BuildError,
    cache_volumes,
    configmap_volume,
    container_security_context,
    metadata,
    pod_security_context,
    pvc_volume,
    secret_env,
)

#: The exit code of a monitor run that reported ok: false: bad input fails the same way every time.
MONITOR_FAILED_EXIT_CODE = 1


def monitor_job_name(model: GPTModel, revision_key: str, run: int) -> str:
    """`<gm>-monitor-<revision key>-<n>`: run n of that revision (reconcile/monitoring.py numbers them)."""
    return child_name(model.name, STAGE_MONITOR, f"{revision_key}-{run}")  # type: ignore[arg-type]


def monitor_state_dir(model: GPTModel) -> str:
    """Where monitor runs leave the prompt-length histogram they saw (never inside a revision's directory)."""
    return f"{ARTIFACTS_MOUNT}/{model.namespace}/.gptmodels/{model.name}/monitor"


def build_monitor_job(model: GPTModel, served: ServedRevision, revision_key: str, name: str, *,
                      metrics_urls: tuple[str, ...] = ()) -> dict[str, Any]:
    """The batch/v1 Job of one monitor run of the served revision. Raises BuildError for a local dataset."""
    spec = model.spec.monitoring
    if spec is None:
        raise ValueError(f"GPTModel {model.name} has no spec.monitoring")
    data = spec.dataset.source
    if data.local is not None:
        raise BuildError("spec.monitoring.dataset.source.local is for gptops run only; use pvc, s3, url, "
                         "huggingface or configMap")
    labels = fixed_labels(component=STAGE_MONITOR, model=model.name, stage=STAGE_MONITOR,
                          revision=served.revision or "source", revision_key=revision_key)
    # The Pods do not carry the model label: with it they would match the vLLM Service's selector.
    pod_labels = {k: v for k, v in labels.items() if k != LABEL_MODEL}
    doc = {"apiVersion": API_VERSION, "kind": model.kind, "metadata": {"name": model.name,
                                                                       "namespace": model.namespace},
           "spec": model.spec.to_dict()}
    args = ["-m", "gptops.pipeline", STAGE_MONITOR,
            "--model-spec-json", json.dumps(doc, separators=(",", ":"), sort_keys=True),
            "--endpoint", f"http://{model.name}.{model.namespace}.svc:{VLLM_PORT}/v1",
            "--run-name", name]
    args += [arg for url in metrics_urls for arg in ("--metrics-url", url)]

    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    if model.spec.artifacts.pvc is not None:
        volumes.append({"name": "artifacts",
                        "persistentVolumeClaim": {"claimName": model.spec.artifacts.pvc.claim_name}})
        mounts.append({"name": "artifacts", "mountPath": ARTIFACTS_MOUNT})
        args += ["--state-dir", monitor_state_dir(model)]
    if data.pvc is not None:
        vol, mount = pvc_volume(data.pvc.claim_name, read_only=True)
        volumes.append(vol)
        mounts.append(mount)
    if data.config_map is not None:
        vol, mount = configmap_volume(data.config_map.name)
        volumes.append(vol)
        mounts.append(mount)
    if data.huggingface is not None and data.huggingface.token_secret_ref is not None:
        ref = data.huggingface.token_secret_ref
        env.append(secret_env("HF_TOKEN", ref.name, ref.key))
    key = model.spec.serving.api_key_secret_ref
    if key is not None:
        env.append(secret_env("VLLM_API_KEY", key.name, key.key))
    cache_vols, cache_mounts, cache_env = cache_volumes()
    container: dict[str, Any] = {
        "name": STAGE_MONITOR,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python"],
        "args": args,
        "env": [*cache_env, {"name": "PYTHONUNBUFFERED", "value": "1"},
                {"name": "GPTOPS_STAGE", "value": STAGE_MONITOR}, *env],
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
        "volumeMounts": [*mounts, *cache_mounts],
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if data.s3 is not None and data.s3.credentials_secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": data.s3.credentials_secret_ref.name}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(name, model, labels),
        "spec": {
            "backoffLimit": 1,
            # A run never outlives its interval: the next one would measure the same traffic.
            "activeDeadlineSeconds": spec.interval_seconds,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": STAGE_MONITOR, "operator": "In",
                                                      "values": [MONITOR_FAILED_EXIT_CODE]}},
            ]},
            "template": {"metadata": {"labels": pod_labels}, "spec": {
                "restartPolicy": "Never",
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": [*volumes, *cache_vols],
            }},
        },
    }
