"""Fixtures of the pipeline tests: a learnable corpus on disk, tiny scratch GPT specs, and one trained run shared
by the tests that only read its outputs. Nothing here touches the network."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="gptops-test-hf-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
from pathlib import Path
from typing import Any

import pytest

from pipeline_corpus import documents  # noqa: E402

from gptops.pipeline import configs_from_spec, run_evaluate, run_prepare, run_train  # noqa: E402

try:
    import torch
    import transformers  # noqa: F401
except ImportError as missing:  # without the train extra nothing here can run: each module is reported skipped
    WITHOUT_TRAIN_EXTRA: str | None = (f"needs the train extra ({missing.name} is not installed): "
                                       "pip install 'gptops[train]'")
else:
    WITHOUT_TRAIN_EXTRA = None
    # Tiny models train fastest on one thread, and the test machine is shared.
    torch.set_num_threads(1)


class _NeedsTrainExtra(pytest.File):
    """Stands in for a test module that cannot be imported without the train extra."""

    def collect(self):
        pytest.skip(WITHOUT_TRAIN_EXTRA)


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Without the train extra, every test module here is one skip that says why (not silently left out)."""
    if WITHOUT_TRAIN_EXTRA is None:
        return None
    return _NeedsTrainExtra.from_parent(parent, path=module_path)


TINY_MODEL = {"source": {"scratch": {"architecture": "gpt2", "layers": 2, "heads": 2, "hidden": 64,
                                     "contextLength": 64, "tokenizer": {"vocabSize": 400}}}}


def ftj_spec(data: Path | str, **overrides: Any) -> dict[str, Any]:
    """A FineTuneJob spec for the tiny model; `overrides` are merged into the top-level sections."""
    spec: dict[str, Any] = {
        "model": {"name": "tiny"},
        "dataset": {"source": {"local": {"path": str(data)}}, "preprocessing": {"blockSize": 64}},
        "training": {"maxSteps": 60, "learningRate": 3e-3, "batchSize": 8, "checkpointEverySteps": 20},
        "evaluation": {"metrics": ["perplexity", "bleu"], "bleu": {"maxNewTokens": 16, "maxSamples": 16}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    return spec


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text("\n".join(documents(400)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file):
    """prepare -> train (60 steps) -> evaluate of the tiny scratch GPT, once per session."""
    root = tmp_path_factory.mktemp("run")
    configs = configs_from_spec(ftj_spec(corpus_file), copy.deepcopy(TINY_MODEL), root)
    prepared = run_prepare(configs.prepare)
    trained = run_train(configs.train)
    evaluated = run_evaluate(configs.evaluate)
    return {"root": root, "configs": configs, "prepare": prepared, "train": trained, "evaluate": evaluated}


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A local S3 (moto's server on 127.0.0.1) with fake credentials; yields (endpoint URL, boto3 client)."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        yield endpoint, boto3.client("s3", endpoint_url=endpoint)
    finally:
        server.stop()
