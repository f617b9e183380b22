"""Where a run's artifacts live, and which weights a GPTModel serves for a revision. Pure."""

from __future__ import annotations

import posixpath

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from gptops.api.constants import ARTIFACTS_MOUNT, PVC_MOUNT_ROOT
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel


def artifact_root(namespace: str, finetunejob: str) -> str:
    """`/artifacts/<namespace>/<ftj>`: the run's directory as every stage Pod and the vLLM Pods see it."""
    return posixpath.join(ARTIFACTS_MOUNT, namespace, finetunejob)


class ServedRevision(BaseModel):
    """What a vLLM Deployment loads: `--model` (a directory or a Hugging Face repo id) and, for LoRA, an adapter."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    revision: str | None = None  # the FineTuneJob name; None = the GPTModel's own source
    model: str
    adapter: str | None = None
    lora_rank: int | None = None  # the adapter's rank, when known (vLLM's --max-lora-rank must be at least this)


def source_model_location(model: GPTModel) -> str | None:
    """The GPTModel's source as vLLM and the stages can load it, or None (s3, local and scratch are not loadable
    in place): a Hugging Face repo id, or the source PVC's path under /mnt/pvc/<claimName>."""
    src = model.spec.source
    if src.huggingface is not None:
        return src.huggingface.repo
    if src.pvc is not None:
        return posixpath.join(PVC_MOUNT_ROOT, src.pvc.claim_name, src.pvc.path.lstrip("/"))
    return None


def served_revision_for(ftj: FineTuneJob, model: GPTModel) -> ServedRevision:
    """The weights to serve once `ftj` is promoted: status.artifacts when the stages reported them, else the
    documented layout (`<root>/model`, or `<root>/adapter` on top of the base model for LoRA)."""
    root = artifact_root(ftj.namespace, ftj.name)
    arts = ftj.status.artifacts
    if ftj.spec.training.method == "lora":
        base = arts.base_model or model.status.serving_artifact or source_model_location(model) or ""
        return ServedRevision(revision=ftj.name, model=base, adapter=arts.adapter or posixpath.join(root, "adapter"),
                              lora_rank=ftj.spec.training.lora_settings.r)
    return ServedRevision(revision=ftj.name, model=arts.model or posixpath.join(root, "model"))


def served_revision_from_status(model: GPTModel) -> ServedRevision | None:
    """The revision recorded in GPTModel.status (servingRevision/servingArtifact/servingAdapter), or None."""
    st = model.status
    if not st.serving_revision or not st.serving_artifact:
        return None
    return ServedRevision(revision=st.serving_revision, model=st.serving_artifact, adapter=st.serving_adapter)


def previous_revision_from_status(model: GPTModel) -> ServedRevision | None:
    """The rollback target recorded in GPTModel.status (previousRevision/previousArtifact/previousAdapter), or None."""
    st = model.status
    if not st.previous_revision or not st.previous_artifact:
        return None
    return ServedRevision(revision=st.previous_revision, model=st.previous_artifact, adapter=st.previous_adapter)


def base_served_revision(model: GPTModel) -> ServedRevision | None:
    """Serving the GPTModel's source as it is (before any FineTuneJob was promoted), where it can be loaded."""
    location = source_model_location(model)
    return None if location is None else ServedRevision(revision=None, model=location)
