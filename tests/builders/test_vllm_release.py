"""Every Deployment the builders can make, checked by the vLLM release the default image pins: its own argument
parser and its own checks (`vllm serve`'s), run in that release's environment (tools/vllm-venv.sh, cached outside the
repository) on the CPU platform, with no GPU and no model loaded. GPTOPS_SKIP_VLLM=1 skips them, saying so."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from gptops.api import ServedRevision
from gptops.api.constants import DEFAULT_VLLM_IMAGE
from gptops.builders import build_deployment

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "vllm-venv.sh"
CHECK = ROOT / "tools" / "vllm_check_args.py"

FULL = ServedRevision(revision="tiny-ft", model="/artifacts/ml/tiny-ft/abc/model")
SOURCE = ServedRevision(revision=None, model="sshleifer/tiny-gpt2")
LORA = ServedRevision(revision="tiny-lora", model="sshleifer/tiny-gpt2",
                      adapter="/artifacts/ml/tiny-lora/abc/adapter", lora_rank=16)
OLDER_LORAS = [ServedRevision(revision=f"tiny-lora-{i}", model="sshleifer/tiny-gpt2",
                              adapter=f"/artifacts/ml/tiny-lora-{i}/abc/adapter", lora_rank=8 * i) for i in (1, 2)]


def pinned_release() -> str:
    return re.search(r"^VLLM_VERSION=(\S+)", SCRIPT.read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if os.environ.get("GPTOPS_SKIP_VLLM") == "1":
        pytest.skip("GPTOPS_SKIP_VLLM=1: vLLM's own checks skipped")
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        pytest.fail(f"{SCRIPT.name} failed: {done.stderr[-2000:]}", pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1]) / "bin" / "python"


def vllm_check(python: Path, argvs: list[list[str]]) -> list[dict]:
    done = subprocess.run([str(python), str(CHECK)], input=json.dumps(argvs), capture_output=True, text=True,
                          timeout=600, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def variants(gptmodel: dict) -> dict[str, list[str]]:
    """What a user's specs can make vLLM run: the source, a full revision, a LoRA revision, tensor parallel,
    prefix caching off, no max length, extra arguments, and several LoRA adapters on one server."""
    out: dict[str, list[str]] = {}

    def add(name: str, served: ServedRevision, gpus: int = 2, older: list[ServedRevision] | None = None,
            max_adapters: int = 1, **serving) -> None:
        doc = copy.deepcopy(gptmodel)
        doc["spec"]["serving"]["lora"] = {"maxAdapters": max_adapters}
        doc["spec"]["serving"]["resources"]["gpus"] = gpus
        vllm = doc["spec"]["serving"]["vllm"]
        vllm.update(serving)
        vllm = {k: v for k, v in vllm.items() if v is not None}
        doc["spec"]["serving"]["vllm"] = vllm
        c = build_deployment(doc, served, older or [])["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["vllm", "serve"]
        out[name] = c["args"]

    add("source", SOURCE, extraArgs=[])
    add("full", FULL, extraArgs=[])
    add("lora", LORA, extraArgs=[])
    add("tensor-parallel-4", FULL, gpus=4, tensorParallelSize=4, extraArgs=[])
    add("no-prefix-caching", FULL, enablePrefixCaching=False, extraArgs=[])
    add("no-max-model-len", FULL, maxModelLen=None, extraArgs=[])
    add("bfloat16", FULL, dtype="bfloat16", extraArgs=[])
    add("several-loras", LORA, older=OLDER_LORAS, max_adapters=3, extraArgs=[])
    add("extra-args", LORA, extraArgs=["--max-num-seqs", "64", "--enforce-eager", "--seed", "1"])
    return out


def test_the_default_image_is_the_checked_release() -> None:
    assert DEFAULT_VLLM_IMAGE == f"vllm/vllm-openai:v{pinned_release()}"


def test_vllm_accepts_every_deployment_we_make(vllm_python: Path, gptmodel: dict) -> None:
    made = variants(gptmodel)
    results = vllm_check(vllm_python, list(made.values()))
    refused = {name: r["error"] for name, r in zip(made, results, strict=True) if not r["ok"]}
    assert refused == {}


def test_the_check_can_fail(vllm_python: Path) -> None:
    """The same check refuses what vLLM refuses: an unknown flag, a LoRA rank it does not offer, a bad dtype."""
    results = vllm_check(vllm_python, [
        ["/m", "--no-such-flag"],
        ["/m", "--enable-lora", "--max-lora-rank", "7"],
        ["/m", "--dtype", "float13"],
        ["/m", "--enable-lora", "--lora-modules", "a"],
    ])
    assert [r["ok"] for r in results] == [False, False, False, False], results
