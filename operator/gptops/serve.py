"""Local serving for `gptops run`: picks an engine, starts it on 127.0.0.1 as a subprocess, waits for /health.

Engines: vLLM (`vllm serve`, when vLLM and a CUDA GPU are present), else `transformers serve` (OpenAI-compatible,
offline with a local model directory), else gptops' own minimal OpenAI-compatible server (`python -m gptops.serve`,
FastAPI + transformers `generate`): /health, /v1/models, /v1/completions, /v1/chat/completions.
torch and transformers are imported only inside the server process.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at definition time.

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ENGINES = ("auto", "vllm", "transformers", "gptops")


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


def choose_engine(requested: str = "auto", adapter: bool = False) -> str:
    """The engine asked for; for auto: vLLM where it can run, else transformers serve (not for LoRA), else ours."""
    if requested not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {requested!r}")
    if requested != "auto":
        return requested
    if vllm_available():
        return "vllm"
    return "transformers" if transformers_serve_available() and not adapter else "gptops"


@dataclass
class ServeSpec:
    """What to serve and how; built from the promoted revision and GPTModel.spec.serving."""

    model_dir: Path
    """A model directory (weights + config + tokenizer); for LoRA, the base model."""
    served_name: str
    """The model id clients send (the GPTModel's name)."""
    adapter_dir: Path | None = None
    """A LoRA adapter over model_dir, or None."""
    vllm: dict[str, Any] = field(default_factory=dict)
    """GPTModel.spec.serving.vllm (camelCase)."""
    host: str = HOST
    port: int = 0
    """0 picks a free port."""


def build_command(engine: str, spec: ServeSpec, port: int) -> list[str]:
    """The server's argv; a list, never a shell string."""
    if engine == "vllm":
        v = spec.vllm
        # With an adapter, the base gets its own name and the adapter is served under the GPTModel's name.
        name = f"{spec.served_name}-base" if spec.adapter_dir else spec.served_name
        cmd = [shutil.which("vllm") or "vllm", "serve", str(spec.model_dir), "--host", spec.host, "--port", str(port),
               "--served-model-name", name,
               "--gpu-memory-utilization", str(v.get("gpuMemoryUtilization", 0.9)),
               "--tensor-parallel-size", str(v.get("tensorParallelSize", 1)),
               "--dtype", str(v.get("dtype", "auto"))]
        if v.get("maxModelLen"):
            cmd += ["--max-model-len", str(v["maxModelLen"])]
        cmd.append("--enable-prefix-caching" if v.get("enablePrefixCaching", True) else "--no-enable-prefix-caching")
        if spec.adapter_dir:
            cmd += ["--enable-lora", "--lora-modules", f"{spec.served_name}={spec.adapter_dir}"]
        return cmd + [str(a) for a in v.get("extraArgs") or []]
    if engine == "transformers":
        if spec.adapter_dir:
            raise ValueError("engine transformers: cannot serve a LoRA adapter; use --engine gptops or vllm")
        # The model id clients send is the path it was loaded from; start() runs this in a directory where
        # `<served_name>` is a link to the model, so the id is the GPTModel's name, as with vLLM.
        return [_transformers_cli() or "transformers", "serve", spec.served_name, "--host", spec.host,
                "--port", str(port), "--device", "auto"]
    cmd = [sys.executable, "-m", "gptops.serve", "--model", str(spec.model_dir), "--host", spec.host,
           "--port", str(port), "--served-model-name", spec.served_name]
    if spec.adapter_dir:
        cmd += ["--adapter", str(spec.adapter_dir)]
    return cmd


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
    `threads` > 0 caps the CPU threads of a CPU engine (OMP_NUM_THREADS).
    """
    engine = choose_engine(engine, adapter=spec.adapter_dir is not None)
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
    process = subprocess.Popen(build_command(engine, spec, port), stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, cwd=workdir, start_new_session=True)
    out.close()
    server = Server(engine, process, f"http://{spec.host}:{port}/v1", spec.served_name, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the {engine} server exited with code {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(server.health_url, timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the {engine} server did not become healthy within {ready_timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- gptops' own server: runs in the subprocess started above ----

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class Generator:
    """A causal LM and its tokenizer behind a lock (one generate at a time: CPU-bound anyway)."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir or model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        self.model = model.eval()
        self.max_len = int(getattr(model.config, "max_position_embeddings", None)
                           or getattr(model.config, "n_positions", 1024))
        self.lock = threading.Lock()

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        template = getattr(self.tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, prompt: str, max_tokens: int, temperature: float, top_p: float, stop: list[str],
                 seed: int | None) -> tuple[str, str, int, int]:
        """(text, finish_reason, prompt_tokens, completion_tokens); the prompt keeps its end when too long."""
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        max_tokens = max(1, min(max_tokens, self.max_len - 1))
        ids = ids[:, -(self.max_len - max_tokens):]
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        with self.lock, self.torch.no_grad():
            if seed is not None:
                self.torch.manual_seed(seed)
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), pad_token_id=pad,
                                      eos_token_id=eos, **kwargs)
        new = out[0, ids.shape[1]:].tolist()
        finish = "length"
        if eos is not None and eos in new:
            new, finish = new[: new.index(eos)], "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in stop:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return text, finish, int(ids.shape[1]), len(new)


def build_app(generator: Generator, served_name: str):
    """The FastAPI app: the subset of the OpenAI API that vLLM also serves, non-streaming and streaming."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="gptops local server")
    created = int(time.time())

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    def params(body: dict[str, Any]) -> dict[str, Any]:
        stop = body.get("stop") or []
        return {
            "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 64),
            "temperature": float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0),
            "top_p": float(body.get("top_p") or 1.0),
            "stop": [stop] if isinstance(stop, str) else list(stop),
            "seed": body.get("seed"),
        }

    def check(body: dict[str, Any]) -> JSONResponse | None:
        if body.get("model") not in (served_name, None):
            return error(404, f"The model `{body.get('model')}` does not exist; this server serves `{served_name}`.",
                         "NotFoundError")
        if int(body.get("n") or 1) != 1:
            return error(400, "n: only 1 is supported", "BadRequestError")
        return None

    def usage(p: int, c: int) -> dict[str, int]:
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def sse(chunks: list[dict[str, Any]]):
        def events():
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": created,
                                            "owned_by": "gptops", "max_model_len": generator.max_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if (bad := check(body)) is not None:
            return bad
        prompts = body.get("prompt", "")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            return error(400, "prompt: expected a string or a list of strings", "BadRequestError")
        choices, p_tok, c_tok = [], 0, 0
        for i, prompt in enumerate(prompts):
            text, finish, p, c = generator.generate(prompt, **params(body))
            if body.get("echo"):
                text = prompt + text
            choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": None})
            p_tok, c_tok = p_tok + p, c_tok + c
        doc = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
               "model": served_name, "choices": choices, "usage": usage(p_tok, c_tok)}
        return sse([doc]) if body.get("stream") else doc

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if (bad := check(body)) is not None:
            return bad
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(400, "messages: expected a non-empty list of {role, content}", "BadRequestError")
        messages = [{"role": m.get("role", "user"), "content": _content(m.get("content"))} for m in messages]
        text, finish, p, c = generator.generate(generator.chat_prompt(messages), **params(body))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served_name}
        if body.get("stream"):
            delta = {"role": "assistant", "content": text}
            return sse([{**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}])
        return {**base, "object": "chat.completion", "usage": usage(p, c), "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}

    return app


def _content(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a content list."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def main(argv: list[str] | None = None) -> None:
    """`python -m gptops.serve --model DIR`: serve one model with gptops' own OpenAI-compatible server."""
    parser = argparse.ArgumentParser(prog="python -m gptops.serve", description=main.__doc__)
    parser.add_argument("--model", required=True, type=Path, help="model directory (weights, config, tokenizer)")
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter directory to merge into the model")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    import uvicorn

    app = build_app(Generator(args.model, args.adapter), args.served_model_name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
