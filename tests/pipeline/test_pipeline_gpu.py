"""The train stage's CUDA paths: bf16, fused AdamW, torch.compile (and switching it off), LoRA on the GPU, and packed
documents kept apart under torch.compile. Marked `gpu`: skipped with the reason where CUDA is missing."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODEL, ftj_spec
from safetensors.torch import load_file
from test_pipeline_packing import examples, packed_rows, tiny_model, unpacked_mean_loss
from transformers import TrainerCallback

from gptops.pipeline import configs_from_spec, run_evaluate, run_prepare, run_train
from gptops.pipeline.train import PackedCollator

pytestmark = pytest.mark.gpu


class Observe(TrainerCallback):
    """Keeps what the Trainer actually ran with: its arguments and where the weights were, in which dtype."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args = args
        self.devices = {p.device.type for p in model.parameters()}
        self.dtypes = {p.dtype for p in model.parameters()}


def _train(tmp_path, corpus_file, model_spec=None, **training):
    spec = ftj_spec(corpus_file, training={"maxSteps": 30, **training}, evaluation={"metrics": ["perplexity"]})
    configs = configs_from_spec(spec, model_spec or copy.deepcopy(TINY_MODEL), tmp_path / "run")
    run_prepare(configs.prepare)
    seen = Observe()
    return run_train(configs.train, callbacks=[seen]), seen, configs


def test_full_training_on_cuda_uses_bf16_fused_adamw_and_compile(tmp_path, corpus_file):
    report, seen, configs = _train(tmp_path, corpus_file)
    assert seen.devices == {"cuda"} and seen.dtypes == {torch.float32}  # fp32 master weights, bf16 autocast
    assert seen.args.bf16 and seen.args.torch_compile and seen.args.optim == "adamw_torch_fused"
    assert report.final_loss < report.first_loss
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # what vLLM loads is not truncated to bf16
    assert run_evaluate(configs.evaluate).metrics["perplexityImprovement"] > 0


def test_compile_false_in_the_spec_trains_eagerly(tmp_path, corpus_file):
    report, seen, _ = _train(tmp_path, corpus_file, compile=False, activationCheckpointing=True)
    assert not seen.args.torch_compile and seen.args.activation_checkpointing
    assert report.final_loss < report.first_loss


def test_lora_on_cuda_keeps_the_frozen_base_in_bf16(tmp_path, trained_run, corpus_file):
    base = {"source": {"local": {"path": str(trained_run["root"] / "model")}}}
    report, seen, configs = _train(tmp_path, corpus_file, base, method="lora", learningRate=1e-2,
                                   lora={"r": 4, "alpha": 8, "dropout": 0.0})
    assert seen.devices == {"cuda"} and torch.bfloat16 in seen.dtypes
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    # LoRA's B matrices start at zero: trained ones are not. (The base was trained on this corpus already, so the
    # loss has little left to fall: on an H200 it went 1.290 -> 1.296, noise at this learning rate.)
    assert any(name.endswith("lora_B.weight") and w.abs().max() > 0 for name, w in adapter.items())
    assert report.final_loss < report.first_loss * 1.05
    evaluated = run_evaluate(configs.evaluate).metrics
    assert evaluated["perplexity"] <= evaluated["baselinePerplexity"] * 1.05


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_packed_documents_stay_apart_when_compiled(architecture):
    """torch.compile traces the model: the boundaries found from position ids must survive it (fp32, so that a leak
    across documents stands out from rounding)."""
    model, items = tiny_model(architecture), examples()
    expected = unpacked_mean_loss(model, items)
    batch = {k: v.cuda() for k, v in PackedCollator(pad_token_id=0)(packed_rows(items, block_size=40)).items()}
    compiled = torch.compile(model.cuda())
    with torch.no_grad():
        packed = float(compiled(**batch, use_cache=False).loss)
        leaky = float(compiled(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss)
    assert abs(packed - expected) < abs(leaky - expected) / 10
