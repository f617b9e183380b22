"""Training that survives a killed Pod (a callback dying after a checkpoint, and a SIGKILLed process), and LoRA
adapters that reload to the same model."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_MODEL, ftj_spec
from safetensors.torch import load_file
from transformers import TrainerCallback

from gptops.pipeline import configs_from_spec, run_evaluate, run_prepare, run_train


class Killed(RuntimeError):
    pass


class KillAfterCheckpoint(TrainerCallback):
    """Dies right after checkpoint `step` is complete: what a preempted Pod leaves behind."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed after checkpoint {self.step}")


def _configs(root, data, **training):
    spec = ftj_spec(data, training={"maxSteps": 30, "checkpointEverySteps": 10, **training})
    return configs_from_spec(spec, copy.deepcopy(TINY_MODEL), root)


def test_a_killed_run_resumes_from_the_newest_complete_checkpoint(tmp_path, corpus_file):
    configs = _configs(tmp_path / "run", corpus_file)
    run_prepare(configs.prepare)
    with pytest.raises(Killed):
        run_train(configs.train, callbacks=[KillAfterCheckpoint(20)])
    torn = tmp_path / "run" / "checkpoints" / "checkpoint-25"  # died while writing this one
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")

    resumed = run_train(configs.train)

    assert resumed.resumed_from.endswith("checkpoint-20")
    assert resumed.steps == 30
    assert not torn.exists()
    # The resumed run ends where an uninterrupted one does: same seed, same data order, same weights.
    straight = _configs(tmp_path / "straight", corpus_file)
    run_prepare(straight.prepare)
    run_train(straight.train)
    a = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4)


def test_resume_never_starts_over(tmp_path, corpus_file):
    configs = _configs(tmp_path / "run", corpus_file, maxSteps=10, resume="never")
    run_prepare(configs.prepare)
    first = run_train(configs.train)
    # A stage run again over sealed weights (a retried Pod) reports them: a revision's files are written once.
    retried = run_train(configs.train)
    assert retried.digest == first.digest and retried.digest.startswith("sha256:")
    assert "already trained" in retried.message
    # Killed after its checkpoints, before the weights were sealed: resume: never trains from step 0 again.
    shutil.rmtree(configs.train.output_dir)
    again = run_train(configs.train)
    assert again.resumed_from is None and again.steps == 10


class KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_lora_adapter_reloads_with_peft_and_gives_the_same_logits(tmp_path, trained_run, corpus_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = trained_run["root"] / "model"  # the tiny trained GPT plays the pretrained model
    model_spec = {"source": {"local": {"path": str(base_dir)}}}
    spec = ftj_spec(corpus_file, training={"method": "lora", "maxSteps": 10, "learningRate": 1e-2,
                                           "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                    evaluation={"metrics": ["perplexity"]})
    configs = configs_from_spec(spec, model_spec, tmp_path / "lora")
    run_prepare(configs.prepare)
    keep = KeepModel()
    report = run_train(configs.train, callbacks=[keep])

    adapter = tmp_path / "lora" / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert not (tmp_path / "lora" / "model").exists()
    assert report.result().artifacts["baseModel"] == str(base_dir)

    # Where training left the model: on a GPU the frozen base is on CUDA in the compute dtype (bf16), so the
    # reloaded copies and the input go there too, and the comparison allows bf16's rounding.
    trained = keep.model.eval()
    device, dtype = trained.device, trained.get_base_model().dtype
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 12]], device=device)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype),
                                         str(adapter)).to(device).eval()
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype).to(device).eval()
    with torch.no_grad():
        want, got, before = trained(input_ids=ids).logits, reloaded(input_ids=ids).logits, base(input_ids=ids).logits
    # Trained under bf16 the Trainer's model hands its logits back in fp32 (accelerate wraps its forward): the
    # values are compared, in fp32.
    got, want, before = got.float(), want.float(), before.float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    assert not torch.allclose(got, before, atol=1e-4)  # the adapter changed the model

    evaluated = run_evaluate(configs.evaluate)
    assert evaluated.metrics["perplexity"] <= evaluated.metrics["baselinePerplexity"] * 1.05


def _whole_json(path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def test_a_torn_trainer_state_is_not_resumed_from(tmp_path):
    from gptops.pipeline.train import _newest_complete_checkpoint

    for step, state in ((10, '{"global_step": 10}'), (20, "")):  # the Pod died while writing step 20's state
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert _newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert not (tmp_path / "checkpoint-20").exists()


def test_a_process_killed_mid_training_resumes_to_the_planned_step(tmp_path, corpus_file):
    ftj = {"kind": "FineTuneJob", "spec": ftj_spec(corpus_file, training={"maxSteps": 100, "checkpointEverySteps": 10})}
    model = {"kind": "GPTModel", "spec": copy.deepcopy(TINY_MODEL)}
    root = tmp_path / "run"
    configs = configs_from_spec(ftj["spec"], model["spec"], root)
    run_prepare(configs.prepare)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GPTOPS_TERMINATION_LOG": str(tmp_path / "log")}
    proc = subprocess.Popen([sys.executable, "-m", "gptops.pipeline", "train", "--spec-json", json.dumps(ftj),
                             "--model-spec-json", json.dumps(model), "--artifacts", str(root)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _whole_json(root / "checkpoints" / "checkpoint-10" / "trainer_state.json"):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the process ended"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)  # the node is gone: no cleanup, maybe a checkpoint half written
        proc.wait()
    assert not (root / "model").exists()

    resumed = run_train(configs.train)

    assert resumed.resumed_from is not None and resumed.steps == 100
    assert json.loads((root / "checkpoints" / "checkpoint-100" / "trainer_state.json").read_text())["global_step"] == 100
