"""Writing the stage result (api/stageresult.py, the one contract) where the operator reads it: the container's
termination message, and the last stdout line. A stage whose result cannot be written has failed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gptops.api.stageresult import MAX_BYTES, StageResult

__all__ = ["MAX_BYTES", "StageResult", "emit", "render"]

TERMINATION_LOG_ENV = "GPTOPS_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"


def render(result: StageResult) -> str:
    """The result as one line of JSON that fits a termination message."""
    return result.to_termination_message()


def emit(result: StageResult) -> bool:
    """Print the result as the last stdout line and write it to the termination log, when there is one (in a Pod,
    or named by $GPTOPS_TERMINATION_LOG). False when the log exists but cannot be written: the operator could not
    read the outcome, so the stage must not exit 0."""
    text = render(result)
    print(text, flush=True)
    path = os.environ.get(TERMINATION_LOG_ENV) or (TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None)
    if path is None:
        return True
    try:
        Path(path).write_text(text)
    except OSError as e:
        print(f"cannot write the stage result to {path}: {e}", file=sys.stderr, flush=True)
        return False
    return True
