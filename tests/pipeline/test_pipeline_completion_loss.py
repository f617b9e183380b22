"""Completion-only loss (dataset.preprocessing.completionOnlyLoss): prompt and user tokens are stored with label -100,
training learns only the completions, and validation perplexity is measured on those same tokens."""

from __future__ import annotations

import copy
import json
import random
import string

import pytest
from conftest import TINY_MODEL, ftj_spec
from datasets import load_from_disk
from pipeline_corpus import documents
from transformers import AutoTokenizer

from gptops.pipeline import configs_from_spec, run_evaluate, run_prepare, run_train
from gptops.pipeline.evaluate import perplexity
from gptops.pipeline.models import load_pretrained_model


def _noise(rng: random.Random) -> str:
    """A prompt nothing can predict: random letters in random-length words."""
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 5))) for _ in range(3))


def _noisy_pairs(path, n: int = 300) -> list[dict[str, str]]:
    """Prompts of noise, completions of one templated (learnable) sentence."""
    rng = random.Random(1)
    rows = [{"prompt": _noise(rng), "completion": d.split(".")[0] + "."} for d in documents(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _run(root, data, *, stages=("prepare",), **dataset):
    spec = ftj_spec(data, dataset={"format": "prompt-completion",
                                   "preprocessing": {"blockSize": 64, "packing": False, **dataset}},
                    training={"maxSteps": 40, "learningRate": 3e-3, "batchSize": 8, "checkpointEverySteps": 40},
                    evaluation={"metrics": ["perplexity"], "compareWithBase": False})
    configs = configs_from_spec(spec, copy.deepcopy(TINY_MODEL), root)
    runs = {"prepare": run_prepare, "train": run_train, "evaluate": run_evaluate}
    return {stage: runs[stage](getattr(configs, stage)) for stage in stages}


def _rows(root):
    ds = load_from_disk(str(root / "dataset"))
    return [(list(r["input_ids"]), r.get("labels")) for split in ("train", "validation") for r in ds[split]]


def test_prompt_tokens_and_only_they_get_label_minus_100(tmp_path):
    rows = _noisy_pairs(tmp_path / "pc.jsonl", 100)
    report = _run(tmp_path / "run", tmp_path / "pc.jsonl")["prepare"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    by_prompt = {r["prompt"]: r["completion"] for r in rows}

    stored = _rows(tmp_path / "run")
    assert len(stored) == 100
    for ids, labels in stored:
        first = next(i for i, label in enumerate(labels) if label != -100)
        assert all(label == -100 for label in labels[:first])
        assert labels[first:] == ids[first:]  # everything after the prompt is learned, the final EOS included
        prompt = tokenizer.decode(ids[:first])
        assert prompt in by_prompt
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[first:-1]) == " " + by_prompt[prompt]  # the space: generation must write it
    assert report.manifest["completionOnlyLoss"] is True
    assert sum(report.manifest["lossTokens"].values()) == sum(len(ids) - labels.count(-100) for ids, labels in stored)


def test_chat_learns_each_assistant_turn_with_its_end_marker_and_no_user_turn(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"who is {d.split()[0]}?"},
                          {"role": "assistant", "content": d.split(".")[0] + "."},
                          {"role": "user", "content": "and then?"},
                          {"role": "assistant", "content": d.split(". ")[1]}]} for d in documents(60)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = configs_from_spec(ftj_spec(data, dataset={"format": "chat",
                                                        "preprocessing": {"blockSize": 64, "packing": False}}),
                                copy.deepcopy(TINY_MODEL), tmp_path / "run")
    run_prepare(configs.prepare)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    eos = tokenizer.eos_token
    # Each answer and its end-of-turn marker; not the newline after it, which also precedes the next turn (learning
    # "newline -> end" taught a served model to answer with nothing).
    expected = {"".join(m["content"] + eos for m in r["messages"] if m["role"] == "assistant") for r in rows}

    for ids, labels in _rows(tmp_path / "run"):
        if len(ids) == 64:
            continue  # truncated to the block: its end is cut
        learned = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
        assert learned in expected
        assert "<|user|>" not in learned and "<|assistant|>" not in learned


def test_the_mask_changes_the_digest_and_nothing_else(tmp_path):
    _noisy_pairs(tmp_path / "pc.jsonl", 100)
    masked = _run(tmp_path / "a", tmp_path / "pc.jsonl", packing=True)["prepare"]
    full = _run(tmp_path / "b", tmp_path / "pc.jsonl", packing=True, completionOnlyLoss=False)["prepare"]

    assert masked.digest != full.digest
    assert [ids for ids, _ in _rows(tmp_path / "a")] == [ids for ids, _ in _rows(tmp_path / "b")]
    assert all(labels is None for _, labels in _rows(tmp_path / "b"))
    assert full.manifest["completionOnlyLoss"] is False
    assert full.manifest["lossTokens"] == full.manifest["tokens"]


def test_training_on_completions_only_predicts_them_better_and_reports_their_count(tmp_path):
    _noisy_pairs(tmp_path / "pc.jsonl")
    stages = ("prepare", "train", "evaluate")
    masked = _run(tmp_path / "masked", tmp_path / "pc.jsonl", stages=stages)
    full = _run(tmp_path / "full", tmp_path / "pc.jsonl", stages=stages, completionOnlyLoss=False)

    # The report counts what a user would count: each validation completion's tokens and its EOS.
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "masked" / "tokenizer"))
    pairs_file = tmp_path / "masked" / "dataset" / "eval_pairs.jsonl"
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    completion_tokens = sum(len(tokenizer(p["prompt"] + " " + p["reference"])["input_ids"])
                            - len(tokenizer(p["prompt"])["input_ids"]) + 1 for p in pairs)
    assert masked["evaluate"].metrics["validationTokens"] == completion_tokens
    assert masked["evaluate"].report["perplexityTokens"] == "completion"
    validation = load_from_disk(str(tmp_path / "full" / "dataset"))["validation"]["input_ids"]
    assert full["evaluate"].metrics["validationTokens"] == sum(len(ids) - 1 for ids in validation)
    assert full["evaluate"].report["perplexityTokens"] == "all"

    # On the completions, the masked model beats the one that also spent its steps on the noise.
    blocks = load_from_disk(str(tmp_path / "masked" / "dataset"))["validation"]
    import torch

    scores = {}
    for name in ("masked", "full"):
        model = load_pretrained_model(str(tmp_path / name / "model"), torch.float32).eval()
        scores[name] = perplexity(model, blocks["input_ids"], 8, torch.device("cpu"), blocks["labels"])[0]
    assert scores["masked"] == pytest.approx(masked["evaluate"].metrics["perplexity"], rel=1e-3)
    assert scores["masked"] < scores["full"], scores


def test_a_template_that_rewrites_earlier_turns_still_masks_all_but_the_assistant_content(tmp_path):
    """A template whose renderings are not prefixes of each other (here: a header with the turn count) cannot be
    diffed turn by turn; each assistant turn's content is learned instead, and no user text."""
    from transformers import GPT2Config

    from gptops.pipeline import models

    rows = [{"messages": [{"role": "user", "content": f"who is {d.split()[0]}?"},
                          {"role": "assistant", "content": d.split(".")[0] + "."}]} for d in documents(60)]
    tokenizer = models.train_tokenizer([m["content"] for r in rows for m in r["messages"]], 400, 64)
    tokenizer.chat_template = ("turns {{ messages|length }}\n{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
                               "\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(str(model_dir))
    GPT2Config(n_positions=64, n_layer=2, n_head=2, n_embd=64, vocab_size=len(tokenizer)).save_pretrained(str(model_dir))
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = configs_from_spec(ftj_spec(data, dataset={"format": "chat",
                                                        "preprocessing": {"blockSize": 64, "packing": False}}),
                                {"source": {"local": {"path": str(model_dir)}}}, tmp_path / "run")
    run_prepare(configs.prepare)

    saved = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    answers = {r["messages"][1]["content"] for r in rows}
    for ids, labels in _rows(tmp_path / "run"):
        learned = saved.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
        assert learned.strip() in answers and "who is" not in learned
