"""Reads the YAML a cluster takes: FineTuneJobs with their GPTModel in the same file or in a sibling file.

Standard library and PyYAML only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GROUP = "gptops.io"


class SpecError(ValueError):
    """A spec file that cannot be run; the message names the file and what is wrong."""


@dataclass
class RunItem:
    """One FineTuneJob to run, with the GPTModel it names."""

    finetunejob: dict[str, Any]
    model: dict[str, Any]
    spec_file: Path
    """The file the FineTuneJob came from; relative `local.path`s resolve against its directory."""
    model_file: Path

    @property
    def name(self) -> str:
        return self.finetunejob["metadata"]["name"]

    @property
    def model_name(self) -> str:
        return self.model["metadata"]["name"]

    @property
    def base_dir(self) -> Path:
        return self.spec_file.parent


def _documents(path: Path) -> list[dict[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    out = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise SpecError(f"{path}: expected Kubernetes objects (mappings), got a {type(doc).__name__}")
        if doc.get("kind") == "List":
            out.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
        else:
            out.append(doc)
    return out


def _ours(doc: dict[str, Any], kind: str) -> bool:
    return doc.get("kind") == kind and str(doc.get("apiVersion", "")).startswith(GROUP + "/")


def _name(doc: dict[str, Any], path: Path) -> str:
    name = (doc.get("metadata") or {}).get("name")
    if not name:
        raise SpecError(f"{path}: a {doc.get('kind')} without metadata.name")
    return name


def load(path: Path | str) -> list[RunItem]:
    """The FineTuneJobs of `path`, in file order, each with its GPTModel (same file first, then sibling *.yaml)."""
    path = Path(path).resolve()
    docs = _documents(path)
    ftjs = [d for d in docs if _ours(d, "FineTuneJob")]
    if not ftjs:
        kinds = sorted({str(d.get("kind")) for d in docs}) or ["nothing"]
        raise SpecError(f"{path}: no FineTuneJob (gptops.io) found; the file holds {', '.join(kinds)}")
    models: dict[str, tuple[dict[str, Any], Path]] = {}
    for d in docs:
        if _ours(d, "GPTModel"):
            models[_name(d, path)] = (d, path)
    items = []
    for ftj in ftjs:
        name = _name(ftj, path)
        model_name = ((ftj.get("spec") or {}).get("model") or {}).get("name")
        if not model_name:
            raise SpecError(f"{path}: FineTuneJob {name}: spec.model.name is required")
        if model_name not in models:
            models.update(_siblings(path, model_name))
        if model_name not in models:
            raise SpecError(
                f"{path}: FineTuneJob {name} names GPTModel {model_name!r}, which is neither in this file "
                f"nor in a *.yaml beside it"
            )
        model, model_file = models[model_name]
        items.append(RunItem(copy.deepcopy(ftj), copy.deepcopy(model), path, model_file))
    return items


def _siblings(path: Path, model_name: str) -> dict[str, tuple[dict[str, Any], Path]]:
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for other in sorted(path.parent.glob("*.y*ml")):
        if other == path or other.suffix not in (".yaml", ".yml"):
            continue
        try:
            docs = _documents(other)
        except SpecError:
            continue  # an unrelated broken file beside ours is not our error
        for d in docs:
            if _ours(d, "GPTModel") and (d.get("metadata") or {}).get("name") == model_name:
                found[model_name] = (d, other)
    return found
