"""Pod-level causes reach the FineTuneJob's conditions and events, on the real control plane: the real scheduler marks
a Pod unschedulable, the operator (kopf, in this process) watches stage Pods."""

from __future__ import annotations

import pytest

from operator_kit import Cluster, wait_for
from test_revisions_cluster import GPTMODEL, MODEL, finetunejob, finish_all, result

pytestmark = pytest.mark.cluster


def test_an_unschedulable_stage_pod_is_said_with_the_schedulers_reason(k: Cluster, operator) -> None:
    k.apply(GPTMODEL, finetunejob("big", resources={"gpus": 16}))  # no node has more than 8
    finish_all(k, "prepare", 1, result("prepare"))
    trained = wait_for(lambda: (c := k.condition("ftj", "big", "Trained")).get("reason") == "Unschedulable" and c,
                       "Trained to say the train Pod cannot be scheduled", timeout=60)
    assert trained["status"] == "False" and "Insufficient nvidia.com/gpu" in trained["message"]
    warnings = wait_for(lambda: [e for e in k.events("big") if (e["type"], e["reason"]) == ("Warning", "Unschedulable")],
                        "a Warning event Unschedulable")
    assert "cannot be scheduled" in warnings[0]["message"]
    assert (k.get("gptmodel", MODEL) or {}).get("status", {}).get("servingRevision") is None
