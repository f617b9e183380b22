"""The CRDs on a real API server: they install, teach `kubectl explain`, default the examples, and refuse bad specs
with the same CEL messages that `gptops validate` prints offline."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml

from gptops.validate import validate_object

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
GM = yaml.safe_load((ROOT / "examples" / "gptmodel.yaml").read_text())
FTJ = yaml.safe_load((ROOT / "examples" / "finetunejob.yaml").read_text())


@pytest.fixture(scope="module")
def crds(control_plane):
    control_plane.install_crds()
    return control_plane


def edited(doc, path, value):
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


def explain(plane, field: str) -> str:
    """kubectl explain, once the API server has published the CRD's OpenAPI (a few seconds after Established)."""
    deadline = time.monotonic() + 60
    while True:
        result = plane.kubectl("explain", field, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout
        time.sleep(1)


def test_crds_are_accepted_and_explained(crds):
    out = explain(crds, "gptmodel.spec.serving.vllm.gpuMemoryUtilization")
    assert "Fraction of GPU memory vLLM may use" in out
    out = explain(crds, "ftj.spec.evaluation.thresholds")
    assert "maxPerplexity" in out and "every threshold that is set must hold" in out


def test_examples_apply_cleanly_with_defaults(crds, namespace):
    for path in ("gptmodel.yaml", "finetunejob.yaml"):
        crds.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / path))
    ftj = json.loads(crds.kubectl("get", "ftj", "tiny-gpt2-wiki", "-n", namespace, "-o", "json").stdout)
    assert ftj["spec"]["training"]["resources"]["nodes"] == 1
    assert ftj["spec"]["dataset"]["preprocessing"]["numProc"] == 1
    gm = json.loads(crds.kubectl("get", "gm", "tiny-gpt2", "-n", namespace, "-o", "json").stdout)
    assert gm["spec"]["serving"]["engine"] == "vllm" and gm["spec"]["serving"]["vllm"]["dtype"] == "auto"
    header = crds.kubectl("get", "ftj", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "PHASE", "PERPLEXITY", "PASSED", "PROMOTED", "AGE"]
    assert crds.kubectl("get", "gptops", "-n", namespace).stdout.count("tiny-gpt2") >= 2


BAD = [
    (GM, "spec.source", {}, "set exactly one of huggingface, pvc, s3, local or scratch"),
    (GM, "spec.source", {"scratch": {"hidden": 100, "heads": 3}}, "hidden must be divisible by heads"),
    (GM, "spec.serving.vllm.gpuMemoryUtilization", 1.5, "gpuMemoryUtilization must be greater than 0 and at most 1"),
    (GM, "spec.serving.vllm.tensorParallelSize", 2, "vllm.tensorParallelSize must not exceed resources.gpus"),
    (GM, "metadata.name", "9lives", "it names the model's Service"),
    (FTJ, "spec.dataset.source.url", {"url": "https://example.com/a.txt"}, "set exactly one of huggingface, url"),
    (FTJ, "spec.dataset.validationSplit", 0.6, "validationSplit must be greater than 0 and at most 0.5"),
    (FTJ, "spec.training.method", "full", "lora settings may only be set when method is lora"),
    (FTJ, "spec.training.resources", {"nodes": 2, "gpus": 0}, "training on more than one node needs gpus >= 1"),
    (FTJ, "spec.evaluation.thresholds.maxPerplexity", 1, "maxPerplexity must be greater than 1"),
    (FTJ, "spec.evaluation.thresholds.minBleu", 101, "minBleu must be between 0 and 100"),
    (FTJ, "spec.evaluation.compareWithBase", False, "improvement thresholds need compareWithBase true"),
]


@pytest.mark.parametrize(("doc", "path", "value", "message"), BAD, ids=[f"{b[1]}={b[2]}"[:50] for b in BAD])
def test_bad_specs_are_refused_with_the_validate_message(crds, namespace, doc, path, value, message):
    bad = edited(doc, path, value)
    result = crds.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad),
                          check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert any(message in p.message for p in validate_object(bad))


def test_dataset_and_model_are_immutable(crds, namespace):
    crds.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "finetunejob.yaml"))
    for path, value, message in [("spec.dataset.validationSplit", 0.2, "spec.dataset is immutable"),
                                 ("spec.model.name", "other", "spec.model is immutable")]:
        result = crds.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(edited(FTJ, path, value)),
                              check=False)
        assert result.returncode != 0 and message in result.stderr
    ok = crds.kubectl("apply", "-n", namespace, "-f", "-",
                      input=yaml.safe_dump(edited(FTJ, "spec.evaluation.promote", False)), check=False)
    assert ok.returncode == 0, ok.stderr
