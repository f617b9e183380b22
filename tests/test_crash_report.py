"""A crash in native code (a segmentation fault in torch, Arrow or tokenizers) ends `gptops` and a stage Pod with
the Python stack of every thread on stderr, not in silence: what a bug report and a Pod's log need."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

CRASH = "import ctypes; ctypes.string_at(0)  # reads address 0: SIGSEGV"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_a_gptops_command_that_crashes_in_native_code_prints_where():
    done = run_python(f"""
        import sys
        from gptops.cli import app

        @app.command(name="crash-here")
        def crash_here():
            {CRASH}

        sys.argv = ["gptops", "crash-here"]
        app()
    """)
    assert done.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "in crash_here" in done.stderr, done.stderr[-2000:]


def test_a_stage_that_crashes_in_native_code_prints_where(tmp_path):
    done = run_python(f"""
        import gptops.pipeline.__main__ as stage

        def train_in_native_code(args):
            {CRASH}

        stage._run = train_in_native_code
        stage.main(["train", "--artifacts", {str(tmp_path)!r}])
    """)
    assert done.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "in train_in_native_code" in done.stderr, done.stderr[-2000:]
