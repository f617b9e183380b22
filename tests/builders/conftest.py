"""Fixtures for the builder tests: a GPTModel and FineTuneJob as a user would write them (plus uid/generation)."""

import copy

import pytest

GPTMODEL = {
    "apiVersion": "gptops.io/v1alpha1",
    "kind": "GPTModel",
    "metadata": {"name": "tiny", "namespace": "ml", "uid": "uid-gm", "generation": 1,
                 "labels": {"argocd.argoproj.io/instance": "my-app", "team": "a"}},
    "spec": {
        "source": {"huggingface": {"repo": "sshleifer/tiny-gpt2", "tokenSecretRef": {"name": "hf"}}},
        "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
        "serving": {
            "replicas": 2,
            "resources": {"gpus": 2, "memory": "32Gi"},
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "vllm": {"maxModelLen": 2048, "tensorParallelSize": 2, "extraArgs": ["--seed", "1; rm -rf /"]},
            "apiKeySecretRef": {"name": "vllm-key"},
        },
    },
}

FINETUNEJOB = {
    "apiVersion": "gptops.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tiny-ft", "namespace": "ml", "uid": "uid-ftj", "generation": 3,
                 "labels": {"argocd.argoproj.io/instance": "my-app"}},
    "spec": {
        "model": {"name": "tiny"},
        "dataset": {"source": {"pvc": {"claimName": "data", "path": "corpus.jsonl"}}},
        "training": {
            "resources": {"gpus": 4, "cpu": 8, "memory": "64Gi"},
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "train", "effect": "NoSchedule"}],
            "backoffLimit": 5,
        },
        "evaluation": {"thresholds": {"maxPerplexity": 50}, "promote": True},
    },
}


@pytest.fixture
def gptmodel():
    return copy.deepcopy(GPTMODEL)


@pytest.fixture
def finetunejob():
    return copy.deepcopy(FINETUNEJOB)
