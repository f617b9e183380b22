"""Local serving: the engine's command line, and `transformers serve` on 127.0.0.1 queried with the openai client:
the answers are the served model's own greedy answers, streamed in several chunks when asked to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serving_checks import greedy_answer, listening_addresses, port_of

from gptops import serve

QUESTION = "What does the with statement do?"
ANSWER = "It runs a block inside a context manager."


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


def test_without_a_gpu_auto_picks_transformers_serve():
    if serve.vllm_available():
        pytest.skip("vLLM and a GPU are here")
    if not serve.transformers_serve_available():
        pytest.skip("transformers serve is not installed")
    assert serve.choose_engine("auto") == "transformers"
    with pytest.raises(ValueError, match="engine: expected one of"):
        serve.choose_engine("gptops")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A 1-layer GPT-2 that learned one chat by heart (tokenizer trained on the spot, our chat template), saved as
    the train stage saves a model."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptops.pipeline.models import train_tokenizer

    out = tmp_path_factory.mktemp("chat-model")
    chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    tok = train_tokenizer([QUESTION, ANSWER] * 20, vocab_size=300, context_length=64)
    ids = torch.tensor([tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.1, "the tiny model did not learn its chat"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    if not serve.transformers_serve_available():
        pytest.skip("transformers serve is not installed")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = tmp_path_factory.mktemp("serve")
    server = serve.start(serve.ServeSpec(model_dir=chat_model, served_name="tiny"), engine="transformers",
                         log=work / "server.log", workdir=work, ready_timeout=240, threads=1)
    yield server
    server.stop()
    assert not server.alive()


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.mark.slow
def test_transformers_serve_answers_as_the_model_itself_on_127_0_0_1_only(server, client, chat_model):
    assert listening_addresses(port_of(server.base_url)) == {"127.0.0.1"}
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == greedy_answer(chat_model, QUESTION, 20) == ANSWER
    assert reply.choices[0].finish_reason == "stop"  # the model ended its turn with EOS, before max_tokens


@pytest.mark.slow
def test_streaming_sends_the_answer_in_several_chunks(client):
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=20, temperature=0, stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) >= 3, pieces
    assert "".join(pieces) == ANSWER


@pytest.mark.slow
def test_a_request_for_another_model_is_refused(client):
    import openai

    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}], max_tokens=2)
