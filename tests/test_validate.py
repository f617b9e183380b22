"""gptops validate: the CRDs' own schemas and CEL rules, offline; each bad spec gives its message."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gptops.cli import app
from gptops.validate import validate_files, validate_object

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml"))
GM = yaml.safe_load((ROOT / "examples" / "gptmodel.yaml").read_text())
FTJ = yaml.safe_load((ROOT / "examples" / "finetunejob.yaml").read_text())


def edited(doc, path, value):
    """A copy of doc with the dotted path set to value (None deletes it)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_are_valid(path):
    problems, _ = validate_files([path])
    assert problems == []


def test_the_main_examples_are_checked():
    _, checked = validate_files([ROOT / "examples" / "gptmodel.yaml", ROOT / "examples" / "finetunejob.yaml"])
    assert checked == 2


BAD = [
    # (document, field path, value, reported path, message fragment)
    (GM, "spec.source.scratch", {"layers": 2}, "spec.source",
     "set exactly one of huggingface, pvc, s3, local or scratch"),
    (GM, "spec.source", {}, "spec.source", "set exactly one of"),
    (GM, "spec.source", {"scratch": {"hidden": 100, "heads": 3}}, "spec.source.scratch",
     "hidden must be divisible by heads"),
    (GM, "spec.source", {"scratch": {"hidden": 30}}, "spec.source.scratch", "hidden must be divisible by heads"),
    (GM, "spec.serving.vllm.gpuMemoryUtilization", 1.5, "spec.serving.vllm.gpuMemoryUtilization",
     "greater than 0 and at most 1"),
    (GM, "spec.serving.vllm.gpuMemoryUtilization", 0, "spec.serving.vllm.gpuMemoryUtilization",
     "greater than 0 and at most 1"),
    (GM, "spec.serving.vllm.tensorParallelSize", 2, "spec.serving.vllm.tensorParallelSize",
     "must not exceed resources.gpus"),
    (GM, "spec.serving.replicas", 101, "spec.serving.replicas", "less than or equal to 100"),
    (GM, "spec.serving.replicas", "two", "spec.serving.replicas", "must be of type integer"),
    (GM, "spec.serving.vllm.dtype", "int4", "spec.serving.vllm.dtype", 'supported values: "auto"'),
    (GM, "spec.serving.extra", 1, "spec.serving.extra", 'unknown field "extra"'),
    (GM, "spec.serving.resources.memory", "lots", "spec.serving.resources.memory", "should match"),
    (GM, "spec.serving.vllm.extraArgs", ["--x"] * 65, "spec.serving.vllm.extraArgs", "at most 64 items"),
    (GM, "spec.artifacts.pvc.claimName", "x" * 254, "spec.artifacts.pvc.claimName", "may not be more than 253"),
    (GM, "metadata.name", "9lives", "<root>", "it names the model's Service"),
    (GM, "metadata.name", "a" * 64, "<root>", "at most 63"),
    (FTJ, "metadata.name", "1run", "<root>", "must start with a lowercase letter"),
    (FTJ, "spec.model", None, "spec.model", "Required value"),
    (FTJ, "spec.dataset.source.url", {"url": "https://example.com/a.txt"}, "spec.dataset.source",
     "set exactly one of huggingface, url, s3, pvc, configMap or local"),
    (FTJ, "spec.dataset.source.url", None, "spec.dataset.source", None),  # still valid: huggingface only
    (FTJ, "spec.dataset.validationSplit", 0.6, "spec.dataset.validationSplit",
     "validationSplit must be greater than 0 and at most 0.5"),
    (FTJ, "spec.dataset.validationSplit", 0, "spec.dataset.validationSplit", "greater than 0"),
    (FTJ, "spec.dataset.preprocessing.maxChars", 5, "spec.dataset.preprocessing.maxChars",
     "maxChars must be at least minChars"),
    (FTJ, "spec.training.method", "full", "spec.training.lora", "lora settings may only be set when method is lora"),
    (FTJ, "spec.training.resources", {"nodes": 2, "gpus": 0}, "spec.training.resources.gpus",
     "training on more than one node needs gpus >= 1"),
    (FTJ, "spec.training.lora.dropout", 1, "spec.training.lora.dropout", "below 1"),
    (FTJ, "spec.evaluation.thresholds.maxPerplexity", 1, "spec.evaluation.thresholds.maxPerplexity",
     "maxPerplexity must be greater than 1"),
    (FTJ, "spec.evaluation.thresholds.minBleu", 101, "spec.evaluation.thresholds.minBleu",
     "minBleu must be between 0 and 100"),
    (FTJ, "spec.evaluation.thresholds.minPerplexityImprovement", 1.5,
     "spec.evaluation.thresholds.minPerplexityImprovement", "fraction between 0 and 1"),
    (FTJ, "spec.evaluation.metrics", ["perplexity", "perplexity"], "spec.evaluation.metrics[1]", "Duplicate value"),
    (FTJ, "spec.evaluation.compareWithBase", False, "spec.evaluation.compareWithBase",
     "improvement thresholds need compareWithBase true"),
    (FTJ, "spec.startFrom", "latest", "spec.startFrom", 'supported values: "auto", "source", "serving"'),
    (FTJ, "spec.training.learningRat", 0.1, "spec.training.learningRat", 'unknown field "learningRat"'),
]


@pytest.mark.parametrize(("doc", "path", "value", "where", "message"), BAD,
                         ids=[f"{b[1]}={json.dumps(b[2])[:30]}" for b in BAD])
def test_bad_spec_gives_its_message(doc, path, value, where, message):
    problems = validate_object(edited(doc, path, value))
    if message is None:
        assert problems == []
        return
    assert [(p.path, message in p.message) for p in problems] == [(where, True)], [str(p) for p in problems]


def test_bleu_thresholds_need_bleu():
    doc = edited(FTJ, "spec.evaluation.metrics", ["perplexity"])
    doc = edited(doc, "spec.evaluation.thresholds.minBleu", 10)
    (problem,) = validate_object(doc)
    assert problem.path == "spec.evaluation.metrics" and "BLEU thresholds need bleu in metrics" in problem.message


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.dataset.source.huggingface.name", "other", "spec.dataset is immutable"),
    ("spec.dataset.validationSplit", 0.2, "spec.dataset is immutable"),
    ("spec.model.name", "other-model", "spec.model is immutable"),
])
def test_dataset_and_model_are_immutable(path, value, message):
    (problem,) = validate_object(edited(FTJ, path, value), old=FTJ)
    assert message in problem.message


def test_other_fields_may_change():
    assert validate_object(edited(FTJ, "spec.evaluation.promote", False), old=FTJ) == []
    assert validate_object(edited(FTJ, "spec.training.maxSteps", 10), old=FTJ) == []


def test_integer_literal_for_a_number_field_is_a_double():
    """YAML `maxPerplexity: 50` must compare as a double in CEL, as in the API server."""
    assert validate_object(edited(FTJ, "spec.evaluation.thresholds.maxPerplexity", 50)) == []


def test_cli_prints_kind_name_path_message_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([
        edited(GM, "spec.serving.vllm.gpuMemoryUtilization", 2.0),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
        edited(FTJ, "spec.evaluation.thresholds.maxPerplexity", 0.5),
    ]))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "GPTModel/tiny-gpt2: spec.serving.vllm.gpuMemoryUtilization: "
        "gpuMemoryUtilization must be greater than 0 and at most 1",
        "FineTuneJob/tiny-gpt2-wiki: spec.evaluation.thresholds.maxPerplexity: "
        "maxPerplexity must be greater than 1 (1 is a perfect model)",
    ]


def test_cli_json_output(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(edited(GM, "spec.source", {})))
    result = CliRunner().invoke(app, ["validate", str(bad), "--output", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["valid"] is False and doc["checked"] == 1
    assert doc["problems"][0]["path"] == "spec.source" and doc["problems"][0]["kind"] == "GPTModel"
    good = CliRunner().invoke(app, ["validate", str(ROOT / "examples" / "gptmodel.yaml"), "-o", "json"])
    assert good.exit_code == 0 and json.loads(good.output)["valid"] is True


def test_cli_reports_unreadable_yaml(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("spec: [unclosed\n")
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1 and "broken.yaml" in result.output


@pytest.mark.parametrize(("doc", "path", "value", "where", "message"),
                         [b for b in BAD if b[4] is not None and not b[1].startswith("metadata.")],
                         ids=[f"{b[1]}={json.dumps(b[2])[:30]}" for b in BAD
                              if b[4] is not None and not b[1].startswith("metadata.")])
def test_the_models_refuse_what_the_crd_refuses(doc, path, value, where, message):
    """`gptops run` parses specs with the pydantic models: they must not accept a spec the cluster refuses."""
    from pydantic import ValidationError

    from gptops.api import FineTuneJob, GPTModel

    cls = GPTModel if doc["kind"] == "GPTModel" else FineTuneJob
    with pytest.raises(ValidationError):
        cls.from_dict(edited(doc, path, value))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_parse_with_the_models(path):
    from gptops.api import FineTuneJob, GPTModel

    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") in ("GPTModel", "FineTuneJob"):
            (GPTModel if doc["kind"] == "GPTModel" else FineTuneJob).from_dict(doc)


def test_patterns_match_as_the_api_server_does():
    """RE2 semantics: a trailing newline does not satisfy `$` (Python's re would admit it, the cluster refuses)."""
    from gptops.validate import check_schema

    schema = {"type": "string", "pattern": "^[0-9]+$"}
    assert check_schema("4", schema, "spec.x") == []
    assert check_schema("4\n", schema, "spec.x")
