"""`python -m gptops.pipeline`: specs from files or inline JSON, the result on the termination log and stdout,
exit 1 with the message on bad input."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import yaml
from conftest import TINY_MODEL, ftj_spec

from gptops.pipeline.__main__ import main


def _objects(data):
    ftj = {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": ftj_spec(data)}
    model = {"apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": "tiny"},
             "spec": copy.deepcopy(TINY_MODEL)}
    return ftj, model


def _last_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prepare_from_one_multi_document_yaml(tmp_path, corpus_file, monkeypatch, capsys):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(log))
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump_all(_objects(corpus_file)))
    assert main(["prepare", "--spec", str(spec), "--artifacts", str(tmp_path / "run")]) == 0
    result = _last_line(capsys)
    assert result["ok"] is True and result["stage"] == "prepare" and result["digest"].startswith("sha256:")
    assert json.loads(log.read_text()) == result
    assert (tmp_path / "run" / "dataset" / "manifest.json").exists()


def test_bad_input_exits_1_with_the_message(tmp_path, monkeypatch, capsys):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(log))
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"content": "x"}) + "\n")
    ftj, model = _objects(data)
    code = main(["prepare", "--spec-json", json.dumps(ftj), "--model-spec-json", json.dumps(model),
                 "--artifacts", str(tmp_path / "run")])
    result = json.loads(log.read_text())
    assert code == 1 and result["ok"] is False
    assert str(data) in result["message"] and "'text'" in result["message"]
    assert _last_line(capsys) == result


def test_a_bad_spec_and_a_missing_model_are_reported(tmp_path, corpus_file, monkeypatch, capsys):
    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(tmp_path / "log"))
    ftj, model = _objects(corpus_file)
    assert main(["train", "--spec-json", json.dumps(ftj), "--artifacts", str(tmp_path)]) == 1
    assert "no GPTModel" in _last_line(capsys)["message"]
    ftj["spec"]["training"]["batchSize"] = 0
    assert main(["train", "--spec-json", json.dumps(ftj), "--model-spec-json", json.dumps(model),
                 "--artifacts", str(tmp_path)]) == 1
    assert _last_line(capsys)["message"].startswith("training.batchSize")


def test_module_entry_point_runs_as_a_process(tmp_path, corpus_file):
    ftj, model = _objects(corpus_file)
    (tmp_path / "ftj.yaml").write_text(yaml.safe_dump(ftj))
    (tmp_path / "gm.json").write_text(json.dumps(model))
    env = {**os.environ, "GPTOPS_TERMINATION_LOG": str(tmp_path / "log"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "gptops.pipeline", "evaluate", "--spec", str(tmp_path / "ftj.yaml"),
                           "--model-spec", str(tmp_path / "gm.json"), "--artifacts", str(tmp_path / "empty")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["stage"] == "evaluate" and "no prepared dataset" in result["message"]


def test_a_crash_exits_3_and_still_says_why(tmp_path, corpus_file, monkeypatch, capsys):
    """A crash (a lost peer, a device error) is retried by its Job, unlike rejected input (exit 1)."""
    import gptops.pipeline.__main__ as entry

    def lost_peer(*args, **kwargs):
        raise RuntimeError("Connection reset by peer")

    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(tmp_path / "log"))
    monkeypatch.setattr(entry, "run_prepare", lost_peer)
    ftj, model = _objects(corpus_file)
    assert main(["prepare", "--spec-json", json.dumps(ftj), "--model-spec-json", json.dumps(model),
                 "--artifacts", str(tmp_path / "run")]) == 3
    result = json.loads((tmp_path / "log").read_text())
    assert result["ok"] is False and result["message"] == "RuntimeError: Connection reset by peer"
