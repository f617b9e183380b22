"""Document-aware packing: packed chat and prompt-completion examples do not attend to each other, so the loss of a
packed batch is the loss of the same examples trained one by one; text pretraining keeps plain concatenation."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, ftj_spec
from datasets import load_from_disk
from pipeline_corpus import documents
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from gptops.pipeline import configs_from_spec, run_prepare
from gptops.pipeline.data.packing import gather, pack_documents
from gptops.pipeline.train import PackedCollator

VOCAB = 97


def tiny_model(architecture: str):
    """A 2-layer model in eval mode (no dropout), seeded, with SDPA attention as the train stage loads it."""
    torch.manual_seed(0)
    if architecture == "gpt2":
        config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=VOCAB, bos_token_id=0,
                            eos_token_id=0)
    else:
        config = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=64, max_position_embeddings=64, vocab_size=VOCAB)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def examples(n: int = 9) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) of prompt-completion examples of 3 to 20 tokens: the prompt's labels are -100."""
    rng = random.Random(3)
    out = []
    for _ in range(n):
        ids = np.array([rng.randrange(1, VOCAB) for _ in range(rng.randint(3, 20))], dtype=np.int32)
        labels = ids.copy()
        labels[: rng.randint(1, len(ids) - 1)] = -100
        out.append((ids, labels))
    return out


def packed_rows(items, block_size: int) -> list[dict]:
    """The rows prepare writes for these examples: its own packing of whole documents, with position ids."""
    flat = np.concatenate([ids for ids, _ in items])
    flat_labels = np.concatenate([labels for _, labels in items])
    layout = pack_documents(np.array([len(ids) for ids, _ in items]), block_size)
    assert len(layout) < len(items)  # several examples share a block, or this test proves nothing
    return [{"input_ids": ids, "labels": labels, "position_ids": np.concatenate([np.arange(n) for _, n in block])}
            for ids, labels, block in zip(gather(flat, layout), gather(flat_labels, layout), layout, strict=True)]


def unpacked_mean_loss(model, items) -> float:
    """The token-weighted mean loss of the examples, each run alone: the sum of their NLLs over their target count."""
    nll, targets = 0.0, 0
    with torch.no_grad():
        for ids, labels in items:
            n = int((labels[1:] != -100).sum())  # the model shifts: token t+1 is the target of position t
            loss = model(input_ids=torch.as_tensor(ids[None], dtype=torch.long),
                         labels=torch.as_tensor(labels[None], dtype=torch.long)).loss
            nll, targets = nll + float(loss) * n, targets + n
    return nll / targets


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_packed_batch_loss_equals_the_examples_trained_one_by_one(architecture):
    model, items = tiny_model(architecture), examples()
    rows = packed_rows(items, block_size=40)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # some blocks are short: the collator pads them too
    batch = PackedCollator(pad_token_id=0)(rows)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = float(model(**batch, use_cache=False).loss)  # as the Trainer runs it
        # The same batch without its position ids is plain concatenation: examples see the ones before them.
        leaky = float(model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss)
    expected = unpacked_mean_loss(model, items)
    assert packed == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(leaky - expected) > 1e-3


def test_chat_blocks_hold_whole_conversations_and_text_stays_concatenated(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"tell me about {d.split()[0]}"},
                          {"role": "assistant", "content": d}]} for d in documents(80)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = ftj_spec(data, dataset={"format": "chat", "preprocessing": {"blockSize": 64}})
    report = run_prepare(configs_from_spec(spec, copy.deepcopy(TINY_MODEL), tmp_path / "chat").prepare)
    assert report.manifest["documentBoundaries"] is True
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "chat" / "tokenizer"))
    train = load_from_disk(str(tmp_path / "chat" / "dataset"))["train"]
    conversations = 0
    for ids, positions in zip(train["input_ids"], train["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        for a, b in zip(starts, starts[1:]):
            text = tokenizer.decode(ids[a:b])
            assert text.startswith("<|user|>\ntell me about") and text.endswith("<|endoftext|>")
            conversations += 1
    assert conversations == report.manifest["documents"]["train"]

    text = tmp_path / "stories.txt"
    text.write_text("\n".join(documents(80)) + "\n")
    report = run_prepare(configs_from_spec(ftj_spec(text), copy.deepcopy(TINY_MODEL), tmp_path / "text").prepare)
    assert report.manifest["documentBoundaries"] is False
    assert "position_ids" not in load_from_disk(str(tmp_path / "text" / "dataset"))["train"].column_names
