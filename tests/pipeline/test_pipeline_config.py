"""Spec dicts to stage configs: documented defaults, path resolution, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptops.pipeline import StageResult, configs_from_spec
from gptops.pipeline.result import MAX_BYTES, emit, render

SCRATCH = {"source": {"scratch": {}}}


def test_defaults_follow_the_api_contract(tmp_path):
    c = configs_from_spec({"dataset": {"source": {"local": {"path": "data.txt"}}}}, SCRATCH, tmp_path / "run", base_dir=tmp_path)
    assert c.prepare.source.kind == "path" and c.prepare.source.location == str(tmp_path / "data.txt")
    assert (c.prepare.format, c.prepare.dedupe, c.prepare.packing, c.prepare.validation_split) == ("text", "exact", True, 0.1)
    assert c.prepare.block_size == 256  # scratch contextLength default, under the 1024 cap
    assert (c.train.method, c.train.epochs, c.train.max_steps, c.train.learning_rate) == ("full", 1.0, None, 5e-5)
    assert (c.train.batch_size, c.train.checkpoint_every_steps, c.train.resume, c.train.seed) == (8, 200, "auto", 42)
    assert (c.train.lora.r, c.train.lora.alpha, c.train.lora.target_modules) == (8, 16, [])
    assert (c.train.compile, c.train.activation_checkpointing) == (True, False)
    assert (c.evaluate.metrics, c.evaluate.compare_with_base, c.evaluate.max_new_tokens) == (["perplexity"], True, 64)
    m = c.train.model
    assert (m.architecture, m.layers, m.heads, m.hidden, m.context_length, m.vocab_size) == ("gpt2", 4, 4, 256, 256, 8000)


def test_compile_and_activation_checkpointing_reach_the_trainer_and_cpu_never_compiles(tmp_path, monkeypatch):
    import torch

    from gptops.pipeline.train import _training_arguments

    spec = {"dataset": {"source": {"local": {"path": "d.txt"}}},
            "training": {"compile": False, "activationCheckpointing": True}}
    off = configs_from_spec(spec, SCRATCH, tmp_path / "run", base_dir=tmp_path).train
    assert (off.compile, off.activation_checkpointing) == (False, True)
    on = configs_from_spec({"dataset": spec["dataset"]}, SCRATCH, tmp_path / "run", base_dir=tmp_path).train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = _training_arguments(on, torch.float32)  # compile: true, but CPU runs stay eager (the gpu tests cover CUDA)
    assert not cpu.torch_compile and cpu.optim == "adamw_torch" and not cpu.use_liger_kernel
    assert _training_arguments(off, torch.float32).activation_checkpointing


def test_whole_objects_and_mounted_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTOPS_PVC_ROOT", "/vol")
    monkeypatch.setenv("GPTOPS_CONFIGMAP_ROOT", "/cm")
    ftj = {"kind": "FineTuneJob", "spec": {"dataset": {"source": {"pvc": {"claimName": "data", "path": "/corpus"}}}}}
    model = {"kind": "GPTModel", "spec": {"source": {"pvc": {"claimName": "models", "path": "gpt2"}}}}
    c = configs_from_spec(ftj, model, tmp_path)
    assert c.prepare.source.location == "/vol/data/corpus"
    assert c.train.model.kind == "path" and c.train.model.location == "/vol/models/gpt2"
    cm = configs_from_spec({"dataset": {"source": {"configMap": {"name": "notes", "key": "train.txt"}}}}, model, tmp_path)
    assert cm.prepare.source.location == "/cm/notes/train.txt"


def test_start_from_the_served_revision(tmp_path):
    model = {"spec": {"source": {"huggingface": {"repo": "gpt2"}}}, "status": {"servingArtifact": "/artifacts/ns/old/model"}}
    ftj = {"dataset": {"source": {"local": {"path": "/d"}}}}
    assert configs_from_spec(ftj, model, tmp_path).train.model.location == "/artifacts/ns/old/model"
    source_only = configs_from_spec({**ftj, "startFrom": "source"}, model, tmp_path).train.model
    assert (source_only.kind, source_only.location, source_only.revision) == ("huggingface", "gpt2", "main")
    with pytest.raises(ValueError, match="startFrom: serving"):
        configs_from_spec({**ftj, "startFrom": "serving"}, {"spec": model["spec"], "status": {}}, tmp_path)


@pytest.mark.parametrize(("ftj", "model", "field"), [
    ({"dataset": {"source": {}}}, SCRATCH, "dataset.source"),
    ({"dataset": {"source": {"local": {"path": "a"}, "url": {"url": "https://x"}}}}, SCRATCH, "dataset.source"),
    ({"dataset": {"source": {"url": {"url": "ftp://x"}}}}, SCRATCH, "dataset.source.url.url"),
    ({"dataset": {"source": {"local": {"path": "a"}}, "validationSplit": 0.9}}, SCRATCH, "dataset.validationSplit"),
    ({"dataset": {"source": {"local": {"path": "a"}}, "format": "xml"}}, SCRATCH, "dataset.format"),
    ({"dataset": {"source": {"local": {"path": "a"}}, "preprocessing": {"dedupe": "fuzzy"}}}, SCRATCH,
     "dataset.preprocessing.dedupe"),
    ({"dataset": {"source": {"local": {"path": "a"}}}}, {"source": {"scratch": {"hidden": 100, "heads": 3}}},
     "source.scratch: hidden (100) must be divisible"),
    ({"dataset": {"source": {"local": {"path": "a"}}}, "training": {"method": "lora"}}, SCRATCH, "training.method"),
    ({"dataset": {"source": {"local": {"path": "a"}}}, "training": {"learningRate": 0}}, SCRATCH, "training.learningRate"),
    ({"dataset": {"source": {"local": {"path": "a"}}}, "evaluation": {"metrics": ["rouge"]}}, SCRATCH,
     "evaluation.metrics"),
])
def test_bad_specs_name_the_field(tmp_path, ftj, model, field):
    with pytest.raises(ValueError) as e:
        configs_from_spec(ftj, model, tmp_path)
    assert str(e.value).startswith(field)


def test_results_are_trimmed_under_4_kib():
    huge = StageResult(stage="prepare", ok=False, message="/data/x.jsonl: line 3: " + "bad " * 5000,
                       metrics={f"m{i}": i for i in range(300)})
    text = render(huge)
    doc = json.loads(text)
    assert len(text.encode()) <= MAX_BYTES <= 4096  # what the kubelet keeps of a termination message
    assert doc["ok"] is False and doc["message"].startswith("/data/x.jsonl: line 3:")


def test_emit_writes_the_termination_log_and_stdout(tmp_path, monkeypatch, capsys):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(log))
    emit(StageResult(stage="train", ok=True, message="done", metrics={"steps": 3}))
    written = json.loads(Path(log).read_text())
    assert written["metrics"] == {"steps": 3}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == written


def test_emit_fails_when_the_result_cannot_be_written(tmp_path, monkeypatch, capsys):
    """The operator reads the result from the termination log: a stage that cannot write it must not exit 0."""
    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(tmp_path / "missing-dir" / "termination-log"))
    assert emit(StageResult(stage="train", ok=True, message="done")) is False
    assert "cannot write the stage result" in capsys.readouterr().err


def test_the_stage_exits_2_when_its_result_cannot_be_written(tmp_path, monkeypatch):
    from gptops.pipeline.__main__ import main

    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(tmp_path / "missing-dir" / "termination-log"))
    # A bad spec fails fast (exit 1 when the result is written); unwritable, the exit says so.
    assert main(["prepare", "--spec-json", "{}", "--model-spec-json", "{}", "--artifacts", str(tmp_path)]) == 2


def test_warmup_ratio_follows_the_api_bounds(tmp_path):
    spec = {"dataset": {"source": {"local": {"path": "d.txt"}}}, "training": {"warmupRatio": 0.99}}
    assert configs_from_spec(spec, SCRATCH, tmp_path).train.warmup_ratio == 0.99
    with pytest.raises(ValueError, match="training.warmupRatio"):
        configs_from_spec({**spec, "training": {"warmupRatio": 1.0}}, SCRATCH, tmp_path)
