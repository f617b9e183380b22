"""Immutable revisions: which spec fields decide a run's weights, the keys they hash to, and where each revision is
written. A change to what the weights depend on gets a new key, so a new directory and new stage Jobs; an edit of
the gate alone keeps every key and re-runs only the gate. Pure; imports gptops.api only."""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from gptops.api.constants import ARTIFACTS_MOUNT, STAGE_EVALUATE
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel

KEY_LENGTH = 10
#: spec.training fields that decide only where and how a Pod runs, never the weights it writes.
RUN_ONLY_TRAINING_FIELDS = ("nodeSelector", "tolerations", "backoffLimit", "resume", "checkpointEverySteps", "compile",
                            "activationCheckpointing")
#: spec.training.resources fields that do not change the weights (gpus and nodes do: they set the global batch).
RUN_ONLY_RESOURCE_FIELDS = ("cpu", "memory")
#: spec.evaluation fields that only the gate reads: changing them re-runs the gate, not the evaluate stage.
GATE_ONLY_EVALUATION_FIELDS = ("thresholds", "promote", "approval")


def _digest(doc: Any) -> str:
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def weights_spec(ftj: FineTuneJob) -> dict[str, Any]:
    """The FineTuneJob fields its weights depend on (camelCase, defaults filled in)."""
    spec = ftj.spec.to_dict()
    training = {k: v for k, v in (spec.get("training") or {}).items() if k not in RUN_ONLY_TRAINING_FIELDS}
    resources = training.get("resources") or {}
    training["resources"] = {k: v for k, v in resources.items() if k not in RUN_ONLY_RESOURCE_FIELDS}
    return {"startFrom": spec.get("startFrom"), "dataset": spec.get("dataset"), "training": training}


def spec_key(ftj: FineTuneJob) -> str:
    """The hash of weights_spec: equal for two specs that train the same way on the same data."""
    return _digest(weights_spec(ftj))


def start_identity(model: GPTModel, start_model: str | None, start_digest: str | None = None) -> dict[str, Any]:
    """What a run starts from, as the revision key sees it: the GPTModel's source, or a served revision's files."""
    if start_model:
        return {"model": start_model, "digest": start_digest}
    return {"source": model.spec.source.to_dict()}


def revision_key(ftj_spec_key: str, start: dict[str, Any]) -> str:
    """The revision: the weights spec and the starting point together."""
    return _digest({"spec": ftj_spec_key, "start": start})


def evaluation_key(revision: str, ftj: FineTuneJob) -> str:
    """The evaluate stage's key: the revision and what is measured (not the thresholds, which only the gate reads)."""
    evaluation = {k: v for k, v in ftj.spec.evaluation.to_dict().items() if k not in GATE_ONLY_EVALUATION_FIELDS}
    return _digest({"revision": revision, "evaluation": evaluation})


def revision_directory(namespace: str, finetunejob: str, revision: str) -> str:
    """`/artifacts/<namespace>/<ftj>/<revision>`: one revision's files as every stage Pod and vLLM Pod sees them."""
    return posixpath.join(ARTIFACTS_MOUNT, namespace, finetunejob, revision)


def evaluation_directory(revision_dir: str, eval_key: str) -> str:
    """Where the evaluate stage writes its report: beside the weights, never over them."""
    return posixpath.join(revision_dir, f"eval-{eval_key}")


@dataclass(frozen=True)
class Revision:
    """One revision of a FineTuneJob: its keys, its directory, and what it starts from."""

    namespace: str
    finetunejob: str
    spec_key: str
    key: str
    eval_key: str
    start_model: str | None = None
    """A served revision's model (or LoRA adapter) directory; None = the GPTModel's source."""

    @property
    def directory(self) -> str:
        return revision_directory(self.namespace, self.finetunejob, self.key)

    @property
    def evaluation_directory(self) -> str:
        return evaluation_directory(self.directory, self.eval_key)

    def stage_key(self, stage: str) -> str:
        """The key in a stage Job's name: the evaluate stage has its own, the others the revision's."""
        return self.eval_key if stage == STAGE_EVALUATE else self.key


def new_revision(ftj: FineTuneJob, model: GPTModel, start_model: str | None = None,
                 start_digest: str | None = None) -> Revision:
    """The revision the current spec asks for, starting from `start_model` (None: the GPTModel's source)."""
    skey = spec_key(ftj)
    key = revision_key(skey, start_identity(model, start_model, start_digest))
    return Revision(ftj.namespace, ftj.name, skey, key, evaluation_key(key, ftj), start_model)


def same_revision(ftj: FineTuneJob, key: str, start_model: str | None) -> Revision:
    """A known revision (read back from its Jobs) under the current spec: the evaluation key follows the spec."""
    return Revision(ftj.namespace, ftj.name, spec_key(ftj), key, evaluation_key(key, ftj), start_model)
