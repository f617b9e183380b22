"""Local serving: the engine's command line, and gptops' own OpenAI-compatible server queried with the openai client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gptops import serve


def test_vllm_command_is_a_list_with_the_gptmodel_settings():
    spec = serve.ServeSpec(model_dir=Path("/runs/qa/model"), served_name="gm",
                           vllm={"maxModelLen": 128, "gpuMemoryUtilization": 0.5, "enablePrefixCaching": False,
                                 "extraArgs": ["--seed", 1]})
    cmd = serve.build_command("vllm", spec, 8123)
    assert cmd[1:3] == ["serve", "/runs/qa/model"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--served-model-name") + 1] == "gm"
    assert cmd[cmd.index("--max-model-len") + 1] == "128"
    assert "--no-enable-prefix-caching" in cmd and cmd[-2:] == ["--seed", "1"]


def test_vllm_serves_a_lora_adapter_under_the_model_name():
    spec = serve.ServeSpec(model_dir=Path("/base"), served_name="gm", adapter_dir=Path("/runs/qa/adapter"))
    cmd = serve.build_command("vllm", spec, 8000)
    assert cmd[cmd.index("--served-model-name") + 1] == "gm-base"
    assert cmd[cmd.index("--lora-modules") + 1] == "gm=/runs/qa/adapter"


def test_without_a_gpu_auto_never_picks_vllm():
    if serve.vllm_available():
        pytest.skip("vLLM and a GPU are here")
    assert serve.choose_engine("auto") in ("transformers", "gptops")
    assert serve.choose_engine("auto", adapter=True) == "gptops"
    with pytest.raises(ValueError, match="engine: expected one of"):
        serve.choose_engine("tgi")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-layer GPT-2 with a byte-level tokenizer trained on the spot, saved like the train stage saves."""
    pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptops.pipeline.models import train_tokenizer

    out = tmp_path_factory.mktemp("tiny-model")
    texts = ["The with statement wraps a block with a context manager."] * 50
    tok = train_tokenizer(texts, vocab_size=300, context_length=64)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["gptops", "transformers"])
def test_openai_client_against_the_local_server(tiny_model, tmp_path, engine):
    openai = pytest.importorskip("openai")
    if engine == "transformers" and not serve.transformers_serve_available():
        pytest.skip("transformers serve is not installed")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    server = serve.start(serve.ServeSpec(model_dir=tiny_model, served_name="tiny"), engine=engine,
                         log=tmp_path / "server.log", workdir=tmp_path / "work", ready_timeout=240)
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "with?"}],
                                              max_tokens=5, temperature=0)
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].finish_reason in ("stop", "length")
        done = client.completions.create(model="tiny", prompt="The with", max_tokens=5, temperature=0)
        assert isinstance(done.choices[0].text, str)
        with pytest.raises(openai.APIStatusError):
            client.completions.create(model="other", prompt="x", max_tokens=2)
    finally:
        server.stop()
    assert not server.alive()
