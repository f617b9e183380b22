"""Plain-process plumbing for the dev cluster: free ports, detached processes with log files, waiting and stopping.

Knows nothing about Kubernetes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process did not start or did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: Path, die_with_parent: bool = False) -> int:
    """Start argv in its own session with stdout and stderr appended to `log`; returns the pid.

    With `die_with_parent` the kernel sends it SIGTERM when this process dies (tests); without it, it outlives
    the caller (the `dev-cluster up` command).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    return proc.pid


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def is_alive(pid: int) -> bool:
    """Whether pid runs (a zombie child is reaped and counts as dead)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def runs_program(pid: int, program: str) -> bool:
    """Whether pid is alive and runs `program` (guards against a recycled pid)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return is_alive(pid) and argv0 == program


def wait_ready(name: str, pid: int, log: Path, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready()` until it is true; raise StartError with the log tail if pid exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if not is_alive(pid):
            raise StartError(f"{name} exited during start-up; last lines of {log}:\n{tail(log)}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StartError(f"{name} not ready after {timeout:.0f}s; last lines of {log}:\n{tail(log)}")
        time.sleep(0.2)


def stop(pid: int, program: str, grace: float = 10.0) -> None:
    """SIGTERM pid if it still runs `program`, then SIGKILL it after `grace` seconds."""
    if not runs_program(pid, program):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while is_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({log} does not exist)"
