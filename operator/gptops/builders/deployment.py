"""The Deployment that serves one revision of a GPTModel (full weights, or base model + LoRA adapter): vLLM on GPUs,
or `transformers serve` from the trainer image on CPU (spec.serving.engine). Pure: returns a dict; imports gptops.api
only."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from gptops.api.artifacts import ServedRevision
from gptops.api.constants import (
    ANNOTATION_ADAPTER,
    ANNOTATION_ARTIFACT,
    ANNOTATION_DIGEST,
    ANNOTATION_REVISION,
    ANNOTATION_SPEC_HASH,
    ARTIFACTS_MOUNT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_NAME,
    VLLM_PORT,
    fixed_labels,
)
from gptops.api.gptmodel import GPTModel
from gptops.builders.common import (
    as_model,
    cache_volumes,
    container_security_context,
    metadata,
    pod_security_context,
    pvc_volume,
    resources,
    secret_env,
    shm_volume,
    tolerations,
)

COMPONENT = "server"
#: vLLM accepts these values for --max-lora-rank.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_LORA_RANK = 64
PROBE_PERIOD = 10
#: Where a transformers Pod finds its model under the GPTModel's name: transformers serve takes the model id clients
#: send to be the path it loads, so an init container links `<SERVED_DIR>/<name>` to the revision's directory.
SERVED_DIR = "/served"


def deployment_name(model: GPTModel | Mapping[str, Any]) -> str:
    """The Deployment (and Service) is named after the GPTModel (a DNS-1035 label, enforced by the CRD)."""
    return as_model(GPTModel, model).name


def server_selector(model: GPTModel) -> dict[str, str]:
    """The Deployment's immutable selector (no revision in it: a new revision is a rolling update)."""
    labels = fixed_labels(component=COMPONENT, model=model.name)
    return {k: labels[k] for k in (LABEL_MANAGED_BY, LABEL_NAME, LABEL_MODEL)}


def served_model_names(model: GPTModel, served: ServedRevision) -> tuple[str, str | None]:
    """(name of the model vLLM loads, name of the LoRA module): clients always ask for the GPTModel's name and get the
    revision; with LoRA the base is also reachable as `<name>-base`."""
    if served.adapter:
        return f"{model.name}-base", model.name
    return model.name, None


def adapter_model_names(model: GPTModel, served: ServedRevision,
                        older: Sequence[ServedRevision] = ()) -> list[tuple[str, ServedRevision]]:
    """The LoRA modules of the server, oldest first, each with its model name on the endpoint: the served (newest)
    adapter is the GPTModel's name; an older one is its FineTuneJob's name, or `<gptmodel>-<finetunejob>` where that
    would take a name already given (the GPTModel's, or `<name>-base`)."""
    if not served.adapter:
        return []
    base_name, newest = served_model_names(model, served)
    taken = {base_name, newest}
    named: list[tuple[str, ServedRevision]] = []
    for rev in older:
        name = rev.revision or "source"
        if name in taken:
            name = f"{model.name}-{name}"
        taken.add(name)
        named.append((name, rev))
    return [*named, (newest or model.name, served)]


def _lora_rank(rank: int | None) -> int:
    want = rank or DEFAULT_LORA_RANK
    return next((r for r in LORA_RANKS if r >= want), LORA_RANKS[-1])


def vllm_args(model: GPTModel, served: ServedRevision, older: Sequence[ServedRevision] = ()) -> list[str]:
    """`vllm serve`'s arguments, one list item each: no value ever goes through a shell. The model (a directory or a
    Hugging Face repo id) comes first, as vLLM's CLI wants it (its `--model` option is deprecated). `older` are the
    adapters of the same base served beside a LoRA revision (spec.serving.lora.maxAdapters above 1), oldest first."""
    v = model.spec.serving.vllm
    base_name, _ = served_model_names(model, served)
    args = [served.model, "--served-model-name", base_name,
            "--host", "0.0.0.0", "--port", str(VLLM_PORT)]
    hf = model.spec.source.huggingface
    if hf is not None and served.model == hf.repo:
        args += ["--revision", hf.revision]
    if v.max_model_len is not None:
        args += ["--max-model-len", str(v.max_model_len)]
    args += [
        "--gpu-memory-utilization", repr(float(v.gpu_memory_utilization)),
        "--tensor-parallel-size", str(v.tensor_parallel_size),
        "--dtype", v.dtype,
        "--enable-prefix-caching" if v.enable_prefix_caching else "--no-enable-prefix-caching",
    ]
    if served.adapter:
        modules = adapter_model_names(model, served, older)
        args += ["--enable-lora", "--lora-modules",
                 *(f"{name}={rev.adapter}" for name, rev in modules),
                 "--max-lora-rank", str(max(_lora_rank(rev.lora_rank) for _, rev in modules))]
        if model.spec.serving.lora.max_adapters > 1:
            # One GPU slot per adapter, so a batch may mix requests for all of them.
            args += ["--max-loras", str(model.spec.serving.lora.max_adapters)]
    return args + list(v.extra_args)


def transformers_model_id(model: GPTModel, served: ServedRevision) -> str:
    """The model id `transformers serve` loads and clients send: the GPTModel's name for files on a volume (linked
    under SERVED_DIR), the repository id for a Hugging Face source. A LoRA revision is its adapter directory, which
    names its base (transformers loads both through peft)."""
    if PurePosixPath(served.adapter or served.model).is_absolute():
        return model.name
    return served.model


def transformers_args(model: GPTModel, served: ServedRevision) -> list[str]:
    """`transformers serve`'s arguments: the one model it serves (preloaded), on all addresses, on CPU."""
    return [transformers_model_id(model, served), "--host", "0.0.0.0", "--port", str(VLLM_PORT), "--device", "cpu"]


def build_deployment(model: GPTModel | Mapping[str, Any], served: ServedRevision,
                     older: Sequence[ServedRevision] = ()) -> dict[str, Any]:
    """The apps/v1 Deployment serving `served` for `model`: rolling update with a progress deadline,
    probes on /health, restricted Pods, the artifacts PVC read-only, GPUs from spec.serving.resources (vLLM only);
    `older` are the LoRA adapters of the same base it also serves (vllm_args)."""
    model = as_model(GPTModel, model)
    serving = model.spec.serving
    revision = served.revision or "source"
    labels = fixed_labels(component=COMPONENT, model=model.name, revision=revision)
    annotations = {ANNOTATION_REVISION: revision, ANNOTATION_ARTIFACT: served.model}
    if served.adapter:
        annotations[ANNOTATION_ADAPTER] = served.adapter
    if served.digest:
        annotations[ANNOTATION_DIGEST] = served.digest

    shm_vol, shm_mount = shm_volume()
    cache_vols, cache_mounts, cache_env = cache_volumes()
    volumes = [shm_vol, *cache_vols]
    mounts = [shm_mount, *cache_mounts]
    if model.spec.artifacts.pvc is not None:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {
            "claimName": model.spec.artifacts.pvc.claim_name, "readOnly": True}})
        mounts.append({"name": "artifacts", "mountPath": ARTIFACTS_MOUNT, "readOnly": True})
    if model.spec.source.pvc is not None:
        vol, mount = pvc_volume(model.spec.source.pvc.claim_name, read_only=True)
        volumes.append(vol)
        mounts.append(mount)

    transformers = serving.engine == "transformers"
    env = list(cache_env)
    if transformers:
        env.append({"name": "TOKENIZERS_PARALLELISM", "value": "false"})
    else:
        env.append({"name": "VLLM_CACHE_ROOT", "value": f"{cache_env[0]['value']}/vllm"})
    hf = model.spec.source.huggingface
    if hf is not None and hf.token_secret_ref is not None and served.model == hf.repo:
        env.append(secret_env("HF_TOKEN", hf.token_secret_ref.name, hf.token_secret_ref.key))
    if serving.api_key_secret_ref is not None:
        env.append(secret_env("VLLM_API_KEY", serving.api_key_secret_ref.name, serving.api_key_secret_ref.key))

    def health() -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": "http"}}

    # Loading weights can take most of the rollout deadline; the startup probe allows exactly that long.
    startup_failures = max(3, math.ceil(serving.rollout_deadline_seconds / PROBE_PERIOD))
    container: dict[str, Any] = {
        "name": "vllm",
        "image": serving.server_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm", "serve"],  # the image's own CLI (python -m vllm.entrypoints.openai.api_server is deprecated)
        "args": vllm_args(model, served, older),
        "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": resources(serving.resources.gpus, serving.resources.cpu, serving.resources.memory),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "startupProbe": {**health(), "periodSeconds": PROBE_PERIOD, "failureThreshold": startup_failures},
        "readinessProbe": {**health(), "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health(), "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 5},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    init_containers: list[dict[str, Any]] = []
    if transformers:
        model_id = transformers_model_id(model, served)
        container.update(name="transformers", command=["transformers", "serve"], args=transformers_args(model, served),
                         resources=resources(0, serving.resources.cpu, serving.resources.memory))
        if PurePosixPath(served.model).is_absolute():
            # Every file is on a volume (a LoRA adapter's base too): nothing is fetched from a hub.
            env += [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TRANSFORMERS_OFFLINE", "value": "1"}]
        if model_id == model.name:
            volumes.append({"name": "served", "emptyDir": {}})
            mounts.append({"name": "served", "mountPath": SERVED_DIR, "readOnly": True})
            container["workingDir"] = SERVED_DIR
            init_containers.append({
                "name": "link-model",
                "image": container["image"],
                "imagePullPolicy": "IfNotPresent",
                "command": ["ln", "-s", served.adapter or served.model, f"{SERVED_DIR}/{model_id}"],
                "volumeMounts": [{"name": "served", "mountPath": SERVED_DIR}],
                "securityContext": container_security_context(),
            })
    pod_spec: dict[str, Any] = {
        # A Service named "vllm" would otherwise inject VLLM_PORT=tcp://..., which vLLM reads as its own setting.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if serving.node_selector:
        pod_spec["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod_spec["tolerations"] = tolerations(serving.tolerations)
    spec = {
        "selector": {"matchLabels": server_selector(model)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": serving.rollout_deadline_seconds,
        "revisionHistoryLimit": 3,
        "template": {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}, "spec": pod_spec},
    }
    if serving.autoscaling is None:
        spec = {"replicas": serving.replicas, **spec}
    # else the autoscaler owns spec.replicas: never sent, so a patch of the Deployment never undoes its scaling.
    # The operator compares this hash with the live Deployment's to decide whether to patch it.
    meta_annotations = {**annotations, ANNOTATION_SPEC_HASH: spec_hash(spec)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(deployment_name(model), model, labels, meta_annotations),
        "spec": spec,
    }


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short, stable digest of a manifest's spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
