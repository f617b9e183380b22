"""The stage result (`gptops.io/stage-result/v1`): a small JSON document for the termination message and stdout.

The operator reads it from the Pod status, which keeps at most 4 KiB, so `render` trims it to fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_VERSION = "gptops.io/stage-result/v1"
MAX_BYTES = 4000  # the kubelet keeps 4096 bytes of a termination message; leave room
TERMINATION_LOG_ENV = "GPTOPS_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"


@dataclass
class StageResult:
    """What one stage reports: ok or not, a human message, headline metrics, artifact paths, a content digest."""

    stage: str
    """prepare, train or evaluate."""
    ok: bool
    """False when the stage failed; `message` then says why."""
    message: str
    """Human readable: on failure it names the file, the field and what was expected."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Headline numbers only (perplexity, bleu, ...); the full report lives next to the artifacts."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Paths or URIs of what the stage wrote (dataset, checkpoint, model, adapter, evaluation)."""
    digest: str | None = None
    """sha256:<hex> of the stage's main output (the tokenized dataset, for prepare)."""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "stage": self.stage,
            "ok": self.ok,
            "message": self.message,
            "metrics": self.metrics,
            "artifacts": self.artifacts,
        }
        if self.digest:
            doc["digest"] = self.digest
        return doc


def render(result: StageResult, max_bytes: int = MAX_BYTES) -> str:
    """The result as one line of JSON of at most `max_bytes` bytes: trims the message, then drops metrics and artifacts."""
    doc = result.to_dict()
    text = _dumps(doc)
    if len(text.encode()) <= max_bytes:
        return text
    # The message is the usual culprit (a long error); keep its start, which names the file and the field.
    overflow = len(text.encode()) - max_bytes
    message = doc["message"].encode()
    keep = max(0, len(message) - overflow - 16)
    doc["message"] = message[:keep].decode(errors="ignore") + " ...(trimmed)"
    for key in ("artifacts", "metrics"):
        if len(_dumps(doc).encode()) <= max_bytes:
            break
        doc[key] = {}
    text = _dumps(doc)
    if len(text.encode()) > max_bytes:  # only a huge stage name could get here
        doc["message"] = "...(trimmed)"
        text = _dumps(doc)
    return text


def emit(result: StageResult) -> str:
    """Write the result to the termination log (when there is one) and print it as the last stdout line."""
    text = render(result)
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path or (os.path.exists(TERMINATION_LOG) and os.access(TERMINATION_LOG, os.W_OK)):
        try:
            Path(path or TERMINATION_LOG).write_text(text)
        except OSError:
            pass  # a read-only /dev must not turn a good stage into a failed one; stdout still has it
    print(text, flush=True)
    return text


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str)
