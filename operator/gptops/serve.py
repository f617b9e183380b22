"""Local serving for `gptops run`: picks an engine, starts it on 127.0.0.1 as a subprocess, waits for /health.

Engines: vLLM (`vllm serve`, when vLLM and a CUDA GPU are present), else `transformers serve` (OpenAI-compatible,
offline with a local model directory). A LoRA revision is served as one model: its adapter merged into its base.
torch and transformers are imported only to merge an adapter; the engines run in their own process.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ENGINES = ("auto", "vllm", "transformers")
MERGED_DIR = "merged"
"""Beside a LoRA revision's adapter/: the adapter merged into its base, written once, for serving."""


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_available() -> bool:
    """vLLM is installed and torch sees a CUDA device."""
    if shutil.which("vllm") is None and importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def transformers_serve_available() -> bool:
    """`transformers serve` and its extras (fastapi, uvicorn, openai, pydantic) are installed."""
    if _transformers_cli() is None:
        return False
    try:
        from transformers.utils.import_utils import is_serve_available
    except ImportError:
        return False
    return is_serve_available()


def _transformers_cli() -> str | None:
    beside = Path(sys.executable).parent / "transformers"
    return str(beside) if beside.exists() else shutil.which("transformers")


def choose_engine(requested: str = "auto") -> str:
    """The engine asked for; for auto: vLLM where it can run, else transformers serve."""
    if requested not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {requested!r}")
    if requested == "auto":
        requested = "vllm" if vllm_available() else "transformers"
    if requested == "transformers" and not transformers_serve_available():
        raise RuntimeError("transformers serve is not installed: pip install 'gptops[train,serve]'")
    return requested


def model_to_serve(artifact: Path, method: str = "full") -> Path:
    """The model directory to serve for a revision: its model/, or for LoRA its adapter merged into its base.

    The merge is written once, to `merged/` beside the adapter, and reused; nothing the revision wrote is changed."""
    if method != "lora":
        return artifact
    from gptops.pipeline.models import merge_adapter

    return Path(merge_adapter(artifact, artifact.parent / MERGED_DIR))


@dataclass
class ServeSpec:
    """What to serve and how; built from the promoted revision and GPTModel.spec.serving."""

    model_dir: Path
    """A model directory (weights + config + tokenizer with its chat template)."""
    served_name: str
    """The model id clients send (the GPTModel's name)."""
    vllm: dict[str, Any] = field(default_factory=dict)
    """GPTModel.spec.serving.vllm (camelCase)."""
    host: str = HOST
    port: int = 0
    """0 picks a free port."""


def build_command(engine: str, spec: ServeSpec, port: int) -> list[str]:
    """The server's argv; a list, never a shell string."""
    if engine == "vllm":
        v = spec.vllm
        cmd = [shutil.which("vllm") or "vllm", "serve", str(spec.model_dir), "--host", spec.host, "--port", str(port),
               "--served-model-name", spec.served_name,
               "--gpu-memory-utilization", str(v.get("gpuMemoryUtilization", 0.9)),
               "--tensor-parallel-size", str(v.get("tensorParallelSize", 1)),
               "--dtype", str(v.get("dtype", "auto"))]
        if v.get("maxModelLen"):
            cmd += ["--max-model-len", str(v["maxModelLen"])]
        cmd.append("--enable-prefix-caching" if v.get("enablePrefixCaching", True) else "--no-enable-prefix-caching")
        return cmd + [str(a) for a in v.get("extraArgs") or []]
    # The model id clients send is the path it was loaded from; start() runs this in a directory where
    # `<served_name>` is a link to the model, so the id is the GPTModel's name, as with vLLM.
    return [_transformers_cli() or "transformers", "serve", spec.served_name, "--host", spec.host,
            "--port", str(port), "--device", "auto"]


@dataclass
class Server:
    """A running server process."""

    engine: str
    process: subprocess.Popen
    base_url: str
    """http://127.0.0.1:<port>/v1"""
    served_name: str
    log: Path

    @property
    def health_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/health"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it lingers."""
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        return self.process.wait()


def start(spec: ServeSpec, engine: str = "auto", log: Path | None = None, workdir: Path | None = None,
          ready_timeout: float = 300, threads: int = 0) -> Server:
    """Start the engine and return once /health answers 200; raises RuntimeError with the log's tail otherwise.

    `workdir` (default: beside the model) is the server's working directory; transformers serve finds its model there.
    `threads` > 0 caps the CPU threads of a CPU engine (OMP_NUM_THREADS). An interrupt while waiting stops the server.
    """
    engine = choose_engine(engine)
    port = spec.port or free_port(spec.host)
    workdir = workdir or spec.model_dir.parent
    workdir.mkdir(parents=True, exist_ok=True)
    if engine == "transformers":
        link = workdir / spec.served_name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(spec.model_dir.resolve(), target_is_directory=True)
    log = log or Path(os.devnull)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    if threads > 0 and engine != "vllm":
        env["OMP_NUM_THREADS"] = str(threads)
    # Its own session: a terminal's Ctrl-C reaches only gptops run, which stops the server itself.
    process = subprocess.Popen(build_command(engine, spec, port), stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, cwd=workdir, start_new_session=True)
    out.close()
    server = Server(engine, process, f"http://{spec.host}:{port}/v1", spec.served_name, log)
    try:
        _wait_healthy(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the {server.engine} server exited with code {server.process.returncode}:\n"
                               f"{_tail(server.log)}")
        try:
            with urllib.request.urlopen(server.health_url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the {server.engine} server did not become healthy within {timeout:.0f}s:\n"
                       f"{_tail(server.log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
