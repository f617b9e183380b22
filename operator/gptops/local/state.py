"""The runs directory: one directory per FineTuneJob revision (`<runs>/<ftj>/<key>/`, with `state.json`; the key is
the start of the spec digest, so a changed spec gets a new directory and never writes into an older one) and the local
status of each GPTModel (`<runs>/_models/<name>.json`; `_` cannot start a Kubernetes name, so it never meets a
FineTuneJob's). No torch: the api's models only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptops.api.artifacts import ServedRevision
from gptops.api.revisions import GATE_ONLY_EVALUATION_FIELDS, KEY_LENGTH

STAGES = ("prepare", "train", "evaluate")
STATE_FILE = "state.json"
MODELS_DIR = "_models"
DATA_DIR = "_data"
#: A revision directory's name (the pipeline's retention sweep, gptops.pipeline.revisions.sweep, matches the same).
_REVISION_KEY = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_precise() -> str:
    """now() with microseconds: orders the revisions a FineTuneJob started within one second."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def spec_digest(ftj_spec: dict[str, Any], model_spec: dict[str, Any]) -> str:
    """sha256 of what decides a run's outputs: the FineTuneJob's spec but the gate (thresholds and promote are
    decided again on the same results, as in the cluster) and the GPTModel's source (not its serving)."""
    evaluation = {k: v for k, v in (ftj_spec.get("evaluation") or {}).items()
                  if k not in GATE_ONLY_EVALUATION_FIELDS}
    doc = {"finetunejob": {**ftj_spec, "evaluation": evaluation}, "source": model_spec.get("source")}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def revision_key(digest: str) -> str:
    """The revision key of a spec digest: its first KEY_LENGTH hex characters, the name of the revision's
    directory under `<runs>/<ftj>/`."""
    return digest.split(":", 1)[-1][:KEY_LENGTH]


def is_revision_key(name: str) -> bool:
    return bool(_REVISION_KEY.match(name))


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
    """The revision's artifact root, `<runs>/<ftj>/<key>`."""
    digest: str
    """spec_digest of the spec these results belong to; another digest means start over."""
    start_model: str | None = None
    """The model directory the run started from (a served revision), or None for the GPTModel's source."""
    start_description: str = ""
    """The same for people: "revision <ftj>" or "source scratch"."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stage -> {"finishedAt", "seconds", "result": the stage-result document}; only stages that succeeded."""
    gate: dict[str, Any] | None = None
    """The gate's decision, once taken (with passedAt, when it passed)."""
    created: str = field(default_factory=now_precise)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def key(self) -> str:
        """The revision key: the name of the directory."""
        return self.directory.name

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


def revisions(ftj_dir: Path) -> list[RunState]:
    """The revisions of a FineTuneJob that have a state (`<ftj_dir>/<key>/state.json`), oldest first."""
    found = []
    for path in sorted(ftj_dir.iterdir()) if ftj_dir.is_dir() else ():
        if path.is_dir() and is_revision_key(path.name) and (state := RunState.load(path)) is not None:
            found.append(state)
    return sorted(found, key=lambda s: (s.created, s.key))


def open_run(ftj_dir: Path, digest: str, fresh: bool, retain: Collection[str] = ()) -> tuple[RunState, str]:
    """The revision of `ftj_dir` (`<runs>/<ftj>`) for the spec `digest`: the one to continue, or a new one in its own
    directory `<ftj_dir>/<key>`; also says which: new, resumed, changed (another revision exists) or fresh.

    Never deletes or writes into another revision's directory. `retain` are the keys the GPTModel serves or keeps as
    previous: with `fresh`, a matching revision among them is left as it is and the run starts over in a new
    directory (a key derived from the digest and the time), which later runs of the same spec continue."""
    existing = revisions(ftj_dir)
    matching = [s for s in existing if s.digest == digest]
    if not fresh and matching:
        old = matching[-1]  # the newest attempt at this spec (an earlier --fresh may have made a second one)
        return old, "resumed" if old.stages else "new"
    others = [s for s in existing if s.digest != digest] or (ftj_dir / STATE_FILE).exists()  # or the old layout
    why = "fresh" if fresh and matching else ("changed" if others else "new")
    for old in matching:  # --fresh: start over, but never over a revision that is served or kept as previous
        if old.key not in retain:
            shutil.rmtree(old.directory)
    taken = set(retain) | {s.key for s in existing if s.digest != digest}
    key = revision_key(digest)
    salt = 0
    while key in taken:
        salt += 1
        key = revision_key(hashlib.sha256(f"{digest}\0{now()}\0{salt}".encode()).hexdigest())
    directory = ftj_dir / key
    if directory.exists():  # a directory without a readable state of this spec: an unfinished start, or foreign
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    state = RunState(directory=directory, digest=digest)
    state.save()
    return state, why


@dataclass
class ModelState:
    """The local stand-in for a GPTModel's status: which FineTuneJob revision is served, and the one before it."""

    name: str
    serving_revision: str | None = None
    """The FineTuneJob's name."""
    previous_revision: str | None = None
    serving_artifact: str | None = None
    """The revision's model directory (`<runs>/<ftj>/<key>/model`), or its LoRA adapter directory."""
    serving_method: str = "full"
    """full (serving_artifact is a model directory) or lora (an adapter directory over serving_base)."""
    serving_base: str | None = None
    """lora: the base model directory the adapter applies to."""
    serving_digest: str | None = None
    """sha256 of the served weights (the adapter for LoRA), as the train stage sealed them."""
    serving_passed_at: str | None = None
    """When the served revision passed its gate (RFC 3339): the promotion order."""
    previous_artifact: str | None = None
    previous_method: str = "full"
    previous_base: str | None = None
    previous_digest: str | None = None
    previous_passed_at: str | None = None
    promoted_at: str | None = None

    @classmethod
    def load(cls, runs_dir: Path, name: str) -> ModelState:
        """The saved state (fields added since it was written take their defaults), or an empty one."""
        try:
            doc = json.loads((runs_dir / MODELS_DIR / f"{name}.json").read_text())
        except (OSError, ValueError):
            return cls(name=name)
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "name": name})

    def save(self, runs_dir: Path) -> None:
        _write_json(runs_dir / MODELS_DIR / f"{self.name}.json", asdict(self))

    def _revision(self, prefix: str) -> ServedRevision | None:
        artifact = getattr(self, f"{prefix}_artifact")
        if not artifact:
            return None
        lora = getattr(self, f"{prefix}_method") == "lora"
        return ServedRevision(revision=getattr(self, f"{prefix}_revision"),
                              model=(getattr(self, f"{prefix}_base") or "") if lora else artifact,
                              adapter=artifact if lora else None, digest=getattr(self, f"{prefix}_digest"),
                              passed_at=getattr(self, f"{prefix}_passed_at"))

    def served(self) -> ServedRevision | None:
        """The served revision as the promotion rule (gptops.reconcile.promotion) sees it; None: nothing yet."""
        return self._revision("serving")

    def previous(self) -> ServedRevision | None:
        """The revision served before it, the same way."""
        return self._revision("previous")

    def promote(self, revision: str, artifact: str, method: str = "full", base: str | None = None,
                digest: str | None = None, passed_at: str | None = None) -> None:
        """Serve `revision` from now on; the one served before becomes previous (unless it is the same files)."""
        if (self.serving_revision, self.serving_artifact, self.serving_base) != (revision, artifact, base):
            self.previous_revision, self.previous_artifact = self.serving_revision, self.serving_artifact
            self.previous_method, self.previous_base = self.serving_method, self.serving_base
            self.previous_digest, self.previous_passed_at = self.serving_digest, self.serving_passed_at
        self.serving_revision, self.serving_artifact = revision, artifact
        self.serving_method, self.serving_base = method, base
        self.serving_digest, self.serving_passed_at = digest, passed_at
        self.promoted_at = now()

    def retained_keys(self, ftj_dir: Path) -> list[str]:
        """The revisions of the FineTuneJob `ftj_dir` (`<runs>/<ftj>`) that must stay: those whose files the
        served or the previous revision uses (its weights, or a LoRA adapter's base)."""
        keys = set()
        for path in (self.serving_artifact, self.serving_base, self.previous_artifact, self.previous_base):
            if not path:
                continue
            rel = Path(path).absolute()
            with contextlib.suppress(ValueError):
                parts = rel.relative_to(ftj_dir.absolute()).parts
                if len(parts) > 1 and is_revision_key(parts[0]):
                    keys.add(parts[0])
        return sorted(keys)

    def as_status(self) -> dict[str, Any]:
        """The fields of GPTModel.status that configs_from_spec and the table read."""
        return {k: v for k, v in {
            "servingRevision": self.serving_revision,
            "previousRevision": self.previous_revision,
            "servingArtifact": self.serving_artifact,
            "servingDigest": self.serving_digest,
        }.items() if v}
