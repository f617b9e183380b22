"""The fleet features on the real control plane: several LoRA adapters on one vLLM Deployment, the ReadWriteOnce
claim condition, and KEDA's ScaledObject where KEDA's CRDs are installed. The operator runs in this process."""

from __future__ import annotations

import copy

import pytest

from operator_kit import GOOD, Cluster, wait_for
from test_revisions_cluster import GPTMODEL, MODEL, finetunejob

pytestmark = pytest.mark.cluster

BASE = "sshleifer/tiny-gpt2"


def lora_modules(args: list[str]) -> list[str]:
    start = args.index("--lora-modules") + 1
    return args[start:args.index("--max-lora-rank")]


def pass_run(k: Cluster, run: str) -> None:
    k.complete_stage(run, "prepare")
    k.complete_stage(run, "train")
    k.complete_stage(run, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", run, "Promoted", "True", timeout=90)


def test_two_promoted_adapters_end_on_one_deployment(k: Cluster, operator) -> None:
    model = copy.deepcopy(GPTMODEL)
    model["spec"]["serving"]["lora"] = {"maxAdapters": 2}
    k.apply(model, finetunejob("lora-a", method="lora"))
    pass_run(k, "lora-a")
    first = k.get("ftj", "lora-a")["status"]["artifacts"]["directory"]
    wait_for(lambda: lora_modules(k.deployment_args(MODEL)) == [f"{MODEL}={first}/adapter"],
             "the first adapter to be served", timeout=90)

    k.apply(finetunejob("lora-b", method="lora"))
    pass_run(k, "lora-b")
    second = k.get("ftj", "lora-b")["status"]["artifacts"]["directory"]
    wait_for(lambda: lora_modules(k.deployment_args(MODEL)) == [f"lora-a={first}/adapter",
                                                                 f"{MODEL}={second}/adapter"],
             "both adapters on the one Deployment", timeout=90)
    args = k.deployment_args(MODEL)
    assert args[0] == BASE and args[args.index("--max-loras") + 1] == "2"
    assert [d["metadata"]["name"] for d in k.items("deployments", f"gptops.io/model={MODEL}")] == [MODEL]
    adapters = wait_for(lambda: (k.get("gptmodel", MODEL) or {}).get("status", {}).get("adapters"),
                        "status.adapters")
    assert [(a["revision"], a["modelName"]) for a in adapters] == [("lora-a", "lora-a"), ("lora-b", MODEL)]
