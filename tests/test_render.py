"""gptops render: every child manifest the operator would create, without a cluster."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from gptops.cli import app

ROOT = Path(__file__).resolve().parents[1]
FILES = [str(ROOT / "examples" / "gptmodel.yaml"), str(ROOT / "examples" / "finetunejob.yaml")]


def render(*args):
    return CliRunner().invoke(app, ["render", *args])


def test_renders_stage_jobs_deployment_and_service():
    result = render(*FILES)
    assert result.exit_code == 0, result.output
    objs = list(yaml.safe_load_all(result.stdout))
    kinds = [(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]) for o in objs]
    assert kinds == [
        ("Job", "tiny-gpt2-wiki-prepare"),
        ("Job", "tiny-gpt2-wiki-train"),
        ("Job", "tiny-gpt2-wiki-evaluate"),
        ("Deployment", "tiny"),
        ("Service", "tiny"),
    ]
    train_args = objs[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    directory = train_args[train_args.index("--artifacts") + 1]
    key = objs[1]["metadata"]["labels"]["gptops.io/revision-key"]
    assert directory == f"/artifacts/default/tiny-gpt2-wiki/{key}"
    assert f"revision {key}" in result.stderr and directory in result.stderr  # the note says where it writes
    dep = objs[3]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    # the example is a LoRA run: served as base model + adapter once promoted, from its revision's directory
    assert args[args.index("--lora-modules") + 1] == f"tiny-gpt2={directory}/adapter"
    assert dep["metadata"]["labels"]["gptops.io/revision"] == "tiny-gpt2-wiki"


def test_json_output_is_a_list():
    result = render(*FILES, "--output", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["kind"] == "List" and len(doc["items"]) == 5


def test_multi_node_training_renders_the_rendezvous_service(tmp_path):
    ftj = yaml.safe_load(Path(FILES[1]).read_text())
    ftj["spec"]["training"]["resources"]["nodes"] = 2
    spec = tmp_path / "ftj.yaml"
    spec.write_text(yaml.safe_dump(ftj))
    objs = list(yaml.safe_load_all(render(FILES[0], str(spec)).stdout))
    assert [o["kind"] for o in objs][:3] == ["Job", "Service", "Job"]
    assert objs[2]["spec"]["completionMode"] == "Indexed"


def test_model_without_its_finetunejob_serves_the_source():
    objs = list(yaml.safe_load_all(render(FILES[0]).stdout))
    assert [o["kind"] for o in objs] == ["Deployment", "Service"]
    args = objs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "sshleifer/tiny-gpt2"


def test_finetunejob_without_its_model_is_an_error():
    result = render(FILES[1])
    assert result.exit_code == 1
    assert "GPTModel 'tiny-gpt2' is not in the given files" in result.output
