"""Reading the YAML a cluster takes: the GPTModel in the same file or beside it, errors that name the file."""

from __future__ import annotations

import textwrap

import pytest

from gptops.local.specs import SpecError, load

MODEL = """
apiVersion: gptops.io/v1alpha1
kind: GPTModel
metadata: {name: gm}
spec: {source: {scratch: {}}}
"""
FTJ = """
apiVersion: gptops.io/v1alpha1
kind: FineTuneJob
metadata: {name: %s}
spec: {model: {name: gm}, dataset: {source: {local: {path: data.txt}}}}
"""


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_model_in_the_same_file_and_jobs_in_file_order(tmp_path):
    f = write(tmp_path / "all.yaml", MODEL + "---" + FTJ % "b" + "---" + FTJ % "a")
    items = load(f)
    assert [i.name for i in items] == ["b", "a"]
    assert items[0].model_name == "gm" and items[0].model_file == f
    assert items[0].base_dir == tmp_path


def test_model_in_a_sibling_file(tmp_path):
    write(tmp_path / "model.yaml", MODEL)
    write(tmp_path / "broken.yaml", "a: [")  # an unrelated broken neighbour is not our error
    f = write(tmp_path / "job.yaml", FTJ % "j")
    (item,) = load(f)
    assert item.model_file == tmp_path / "model.yaml"


def test_missing_model_names_file_job_and_model(tmp_path):
    f = write(tmp_path / "job.yaml", FTJ % "j")
    with pytest.raises(SpecError, match=r"job.yaml: FineTuneJob j names GPTModel 'gm', which is neither"):
        load(f)


def test_no_finetunejob_says_what_the_file_holds(tmp_path):
    f = write(tmp_path / "m.yaml", MODEL)
    with pytest.raises(SpecError, match="no FineTuneJob .* the file holds GPTModel"):
        load(f)


def test_invalid_yaml(tmp_path):
    f = write(tmp_path / "x.yaml", "kind: [")
    with pytest.raises(SpecError, match="x.yaml: not valid YAML"):
        load(f)
