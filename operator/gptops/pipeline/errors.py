"""The one exception a stage raises for bad input; the CLI turns it into an ok=false stage result and exit code 1."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input or an impossible request. The message names the file, the field and what was expected."""
