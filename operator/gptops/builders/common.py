"""Pieces every builder shares: owner references, the restricted security context, volumes, tolerations.
Pure: imports gptops.api only, never kopf or kubernetes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from gptops.api.common import Toleration
from gptops.api.constants import (
    API_VERSION,
    CACHE_MOUNT,
    CONFIGMAP_MOUNT_ROOT,
    GPU_RESOURCE,
    PVC_MOUNT_ROOT,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel
from gptops.api.names import dns_label

#: The non-root user every Pod runs as; it overrides the images' own USER (65532 in ours), and no image needs a
#: particular uid: none owns files for it, and vLLM runs as any uid. Every Pod of a model shares it, so what one stage
#: writes on the artifacts volume the next stage and the server can read and extend.
RUN_AS_USER = 1000

M = TypeVar("M", GPTModel, FineTuneJob)


class BuildError(ValueError):
    """A spec that cannot be turned into a child in a cluster; the message names the field."""


def as_model(cls: type[M], obj: M | Mapping[str, Any]) -> M:
    """Accept a parsed model or a raw object dict (kopf body, YAML document)."""
    if isinstance(obj, BaseModel):
        return obj  # type: ignore[return-value]
    return cls.from_dict(dict(obj))


def owner_reference(owner: GPTModel | FineTuneJob) -> dict[str, Any]:
    """A controller owner reference: garbage collection removes the child with its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(name: str, owner: GPTModel | FineTuneJob, labels: dict[str, str],
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> dict[str, Any]:
    """Pod-level part of the "restricted" Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level part of the "restricted" Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(gpus: int, cpu: str | int | None, memory: str | int | None) -> dict[str, Any]:
    """Requests and limits; GPUs (an extended resource) are requested and limited alike."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu is not None:
        requests["cpu"] = str(cpu)
    if memory is not None:
        requests["memory"] = limits["memory"] = str(memory)
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in items]


def shm_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """A memory-backed /dev/shm: PyTorch data loaders and NCCL need more than the runtime's 64 MiB."""
    return ({"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "dshm", "mountPath": "/dev/shm"})


def cache_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Writable HOME, caches and /tmp for a non-root user on any image: (volumes, mounts, env)."""
    volumes = [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "cache", "mountPath": CACHE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    env = [
        {"name": "HOME", "value": CACHE_MOUNT},
        {"name": "XDG_CACHE_HOME", "value": CACHE_MOUNT},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_MOUNT}/triton"},
    ]
    return volumes, mounts, env


def pvc_volume(claim_name: str, *, read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PVC named in a spec, mounted at /mnt/pvc/<claimName> (where the pipeline looks for it)."""
    name = volume_name("pvc", claim_name)
    return (
        {"name": name, "persistentVolumeClaim": {"claimName": claim_name, "readOnly": read_only}},
        {"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim_name}", "readOnly": read_only},
    )


def configmap_volume(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ConfigMap dataset, mounted at /etc/gptops/configmaps/<name>."""
    vol = volume_name("cm", name)
    return (
        {"name": vol, "configMap": {"name": name}},
        {"name": vol, "mountPath": f"{CONFIGMAP_MOUNT_ROOT}/{name}", "readOnly": True},
    )


def volume_name(prefix: str, name: str) -> str:
    """A volume name (a DNS label) for a referenced object."""
    return dns_label(prefix, name)


def secret_env(env_name: str, secret: str, key: str) -> dict[str, Any]:
    """An env var from a Secret key: the value never appears in a manifest, an argument or a log."""
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
