"""A revision's files on disk: the sha256 seal of the trained weights, written once, and the retention sweep of a
FineTuneJob's other revisions. No torch: the operator's stages and `gptops run` share it."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from gptops.api.revisions import KEY_LENGTH

log = logging.getLogger(__name__)

#: Written into model/ or adapter/ after the weights: its presence means the directory is complete and final.
SEAL_FILE = "gptops-weights.json"
#: A revision directory's name (the revision key); nothing else is ever swept.
_REVISION_DIR = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")
_CHUNK = 1 << 20


def weights_digest(directory: Path) -> str:
    """sha256 over every file of `directory` but the seal (relative path, size and bytes, in path order)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SEAL_FILE):
        rel = path.relative_to(directory).as_posix()
        h.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def seal(directory: Path) -> str:
    """Record the digest of freshly written weights in the directory; returns it."""
    digest = weights_digest(directory)
    (directory / SEAL_FILE).write_text(json.dumps({"digest": digest}) + "\n")
    return digest


def sealed(directory: Path) -> str | None:
    """The digest a finished train stage recorded in `directory`, or None when the weights are not complete."""
    try:
        return str(json.loads((directory / SEAL_FILE).read_text())["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify(directory: Path) -> str:
    """The recorded digest, after checking the files still match it; raises ValueError naming the directory."""
    recorded = sealed(directory)
    if recorded is None:
        raise ValueError(f"{directory}: no {SEAL_FILE}; expected the sealed output of the train stage")
    actual = weights_digest(directory)
    if actual != recorded:
        raise ValueError(f"{directory}: the weights changed since training (recorded {recorded}, found {actual})")
    return recorded


def sweep(revision_dir: Path, retain: Iterable[str]) -> list[str]:
    """Remove the FineTuneJob's other revision directories (siblings of `revision_dir`) except those in `retain`
    (the served and the previous revision); returns the keys removed. Directories that are not revisions stay."""
    keep = {revision_dir.name, *retain}
    removed = []
    parent = revision_dir.parent
    for path in sorted(parent.iterdir()) if parent.is_dir() else ():
        if path.is_dir() and _REVISION_DIR.match(path.name) and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
            log.info("Removed revision directory path=%s", path)
    return removed
