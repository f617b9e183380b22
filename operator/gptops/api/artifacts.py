"""Where a run's artifacts live, and which weights a GPTModel serves for a revision. Pure."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from gptops.api.constants import ARTIFACTS_MOUNT, PVC_MOUNT_ROOT
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel


class ServedRevision(BaseModel):
    """What a vLLM Deployment loads: `--model` (a directory or a Hugging Face repo id) and, for LoRA, an adapter."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    revision: str | None = None  # the FineTuneJob name; None = the GPTModel's own source
    model: str
    adapter: str | None = None
    lora_rank: int | None = None  # the adapter's rank, when known (vLLM's --max-lora-rank must be at least this)
    digest: str | None = None  # sha256 of the weights (the adapter for LoRA), as the train stage recorded it
    passed_at: str | None = None  # when the revision passed its gate: the promotion order (reconcile/promotion.py)

    def same_files(self, other: ServedRevision | None) -> bool:
        """Whether `other` serves exactly these files (same revision, same directories)."""
        return other is not None and (self.revision, self.model, self.adapter) == \
            (other.revision, other.model, other.adapter)


def revision_key_of(path: str) -> str:
    """The revision key in a path under a revision's directory (`/artifacts/<ns>/<ftj>/<key>/model`), or ""."""
    parts = PurePosixPath(path).parts
    root = PurePosixPath(ARTIFACTS_MOUNT).parts
    return parts[len(root) + 2] if len(parts) > len(root) + 2 and parts[: len(root)] == root else ""


def source_model_location(model: GPTModel) -> str | None:
    """The GPTModel's source as vLLM and the stages can load it, or None (s3, local and scratch are not loadable
    in place): a Hugging Face repo id, or the source PVC's path under /mnt/pvc/<claimName>."""
    src = model.spec.source
    if src.huggingface is not None:
        return src.huggingface.repo
    if src.pvc is not None:
        return posixpath.join(PVC_MOUNT_ROOT, src.pvc.claim_name, src.pvc.path.lstrip("/"))
    return None


def served_revision_for(ftj: FineTuneJob, model: GPTModel, passed_at: str | None = None) -> ServedRevision | None:
    """The weights to serve for `ftj`'s current revision, as its status records them (the train stage's result,
    under the revision's own directory), or None while the run has not written them."""
    arts = ftj.status.artifacts
    if not arts.directory:
        return None
    if ftj.spec.training.method == "lora":
        base = arts.base_model or source_model_location(model) or ""
        return ServedRevision(revision=ftj.name, model=base,
                              adapter=arts.adapter or posixpath.join(arts.directory, "adapter"),
                              lora_rank=ftj.spec.training.lora_settings.r, digest=arts.digest, passed_at=passed_at)
    return ServedRevision(revision=ftj.name, model=arts.model or posixpath.join(arts.directory, "model"),
                          digest=arts.digest, passed_at=passed_at)


def _record(prefix: str, served: ServedRevision | None) -> dict[str, Any]:
    return {
        f"{prefix}Revision": served.revision if served else None,
        f"{prefix}Artifact": served.model if served else None,
        f"{prefix}Adapter": served.adapter if served else None,
        f"{prefix}LoraRank": served.lora_rank if served else None,
        f"{prefix}Digest": served.digest if served else None,
        f"{prefix}PassedAt": served.passed_at if served else None,
    }


def serving_status(served: ServedRevision | None, previous: ServedRevision | None) -> dict[str, Any]:
    """The GPTModel.status fields that record the served revision and the rollback target, camelCase; a None
    clears its field in a merge patch. Only the GPTModel's own pass writes them (promotion, pin, rollback)."""
    return {**_record("serving", served), **_record("previous", previous)}


#: Every GPTModel.status field that serving_status writes.
SERVING_STATUS_FIELDS = tuple(serving_status(None, None))


def recorded_revision(fields: Mapping[str, Any], prefix: str) -> ServedRevision | None:
    """The revision that status fields (as serving_status writes them) record under `prefix` (serving or
    previous), or None when they record no artifact. The revision is None when it is the GPTModel's source."""
    if not fields.get(f"{prefix}Artifact"):
        return None
    return ServedRevision(revision=fields.get(f"{prefix}Revision"), model=fields[f"{prefix}Artifact"],
                          adapter=fields.get(f"{prefix}Adapter"), lora_rank=fields.get(f"{prefix}LoraRank"),
                          digest=fields.get(f"{prefix}Digest"), passed_at=fields.get(f"{prefix}PassedAt"))


def served_revision_from_status(model: GPTModel) -> ServedRevision | None:
    """The fine-tuned revision recorded in GPTModel.status (servingRevision, servingArtifact, ...), or None."""
    if not model.status.serving_revision:
        return None
    return recorded_revision(model.status.to_dict(), "serving")


def previous_revision_from_status(model: GPTModel) -> ServedRevision | None:
    """The fine-tuned rollback target recorded in GPTModel.status (previousRevision, previousArtifact, ...), or
    None."""
    if not model.status.previous_revision:
        return None
    return recorded_revision(model.status.to_dict(), "previous")


def base_served_revision(model: GPTModel) -> ServedRevision | None:
    """Serving the GPTModel's source as it is (before any FineTuneJob was promoted), where it can be loaded."""
    location = source_model_location(model)
    return None if location is None else ServedRevision(revision=None, model=location)
