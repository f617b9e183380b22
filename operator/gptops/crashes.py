"""What a crash in native code leaves behind."""

from __future__ import annotations

import faulthandler
import io


def report_native_crashes() -> None:
    """A crash in native code (torch, Arrow, tokenizers) prints the Python stack of every thread to stderr instead of
    ending the process in silence: the terminal for `gptops`, the Pod's log for a stage. An stderr without a file
    descriptor (a test's captured stream) cannot take it, and is left as it is."""
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass
