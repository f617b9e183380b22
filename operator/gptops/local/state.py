"""The runs directory: one artifact root per FineTuneJob (`<runs>/<ftj>/`, with `state.json`) and the local status
of each GPTModel (`<runs>/_models/<name>.json`; `_` cannot start a Kubernetes name, so it never meets a FineTuneJob's).
Standard library only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("prepare", "train", "evaluate")
STATE_FILE = "state.json"
MODELS_DIR = "_models"
DATA_DIR = "_data"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def spec_digest(ftj_spec: dict[str, Any], model_spec: dict[str, Any]) -> str:
    """sha256 of what decides a run's outputs: the FineTuneJob's spec and the GPTModel's source (not its serving)."""
    doc = {"finetunejob": ftj_spec, "source": model_spec.get("source")}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically: an interrupt leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


@dataclass
class RunState:
    """What `gptops run` finished for one FineTuneJob: stage results in order, the gate, the resolved start model."""

    directory: Path
    """The FineTuneJob's artifact root, `<runs>/<ftj>`."""
    digest: str
    """spec_digest of the spec these results belong to; another digest means start over."""
    start_model: str | None = None
    """The model directory the run started from (a served revision), or None for the GPTModel's source."""
    start_description: str = ""
    """The same for people: "revision <ftj>" or "source scratch"."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stage -> {"finishedAt", "seconds", "result": the stage-result document}; only stages that succeeded."""
    gate: dict[str, Any] | None = None
    """The gate's decision, once taken."""
    created: str = field(default_factory=now)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def load(cls, directory: Path) -> RunState | None:
        """The saved state of a run directory, or None when there is none (or it is unreadable)."""
        try:
            doc = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(
            directory=directory,
            digest=doc.get("specDigest", ""),
            start_model=doc.get("startModel"),
            start_description=doc.get("startDescription", ""),
            stages=doc.get("stages") or {},
            gate=doc.get("gate"),
            created=doc.get("created", now()),
        )

    def save(self) -> None:
        _write_json(self.path, {
            "specDigest": self.digest,
            "startModel": self.start_model,
            "startDescription": self.start_description,
            "stages": self.stages,
            "gate": self.gate,
            "created": self.created,
            "updated": now(),
        })

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def record(self, stage: str, result: dict[str, Any], seconds: float) -> None:
        """Mark a stage finished (and save), so an interrupted run resumes after it."""
        self.stages[stage] = {"finishedAt": now(), "seconds": round(seconds, 1), "result": result}
        self.save()


def open_run(directory: Path, digest: str, fresh: bool) -> tuple[RunState, str]:
    """The state to continue, or a new one over an emptied directory; also says which: new, resumed or changed."""
    old = None if fresh else RunState.load(directory)
    if old is not None and old.digest == digest:
        return old, "resumed" if old.stages else "new"
    why = "fresh" if fresh and directory.exists() else ("changed" if old is not None else "new")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    state = RunState(directory=directory, digest=digest)
    state.save()
    return state, why


@dataclass
class ModelState:
    """The local stand-in for a GPTModel's status: which FineTuneJob's output is served."""

    name: str
    serving_revision: str | None = None
    previous_revision: str | None = None
    serving_artifact: str | None = None
    serving_method: str = "full"
    """full (serving_artifact is a model directory) or lora (an adapter directory over serving_base)."""
    serving_base: str | None = None
    """lora: the base model directory the adapter applies to."""
    previous_artifact: str | None = None
    previous_method: str = "full"
    previous_base: str | None = None
    promoted_at: str | None = None

    @classmethod
    def load(cls, runs_dir: Path, name: str) -> ModelState:
        try:
            doc = json.loads((runs_dir / MODELS_DIR / f"{name}.json").read_text())
        except (OSError, ValueError):
            return cls(name=name)
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "name": name})

    def save(self, runs_dir: Path) -> None:
        _write_json(runs_dir / MODELS_DIR / f"{self.name}.json", asdict(self))

    def promote(self, revision: str, artifact: str, method: str = "full", base: str | None = None) -> None:
        """Serve `revision` from now on; the one served before becomes previous (unless it is the same)."""
        if self.serving_revision != revision:
            self.previous_revision, self.previous_artifact = self.serving_revision, self.serving_artifact
            self.previous_method, self.previous_base = self.serving_method, self.serving_base
        self.serving_revision, self.serving_artifact = revision, artifact
        self.serving_method, self.serving_base = method, base
        self.promoted_at = now()

    def as_status(self) -> dict[str, Any]:
        """The fields of GPTModel.status that configs_from_spec and the table read."""
        return {k: v for k, v in {
            "servingRevision": self.serving_revision,
            "previousRevision": self.previous_revision,
            "servingArtifact": self.serving_artifact,
        }.items() if v}
