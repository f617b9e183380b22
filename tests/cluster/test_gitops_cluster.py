"""What Argo CD sees after a whole lifecycle: the operator writes status only, so a server-side diff of the applied
manifests against the live objects (what Argo CD computes with ServerSideApply and ServerSideDiff) shows no change,
and applying them again changes nothing."""

from __future__ import annotations

import json

import pytest

from operator_kit import EXAMPLES, GOOD, MODEL, RUN, Cluster, wait_for

pytestmark = pytest.mark.cluster

MANIFESTS = [a for m in ("gptmodel.yaml", "finetunejob.yaml") for a in ("-f", str(EXAMPLES / m))]
ARGOCD = ("--server-side", "--field-manager=argocd-controller")


def server_side_diff(k: Cluster) -> str:
    done = k.kubectl("diff", *ARGOCD, *MANIFESTS, check=False)
    assert done.returncode in (0, 1), done.stderr  # 1: differences; anything else: kubectl failed
    return done.stdout


def test_a_whole_lifecycle_leaves_nothing_for_argo_cd_to_sync(k: Cluster, operator) -> None:
    k.kubectl("apply", *ARGOCD, *MANIFESTS)
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", RUN, "Promoted", "True")
    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", timeout=90)

    diff = server_side_diff(k)
    assert diff == "", diff
    k.kubectl("apply", *ARGOCD, *MANIFESTS)
    assert server_side_diff(k) == ""
    # Nothing but status was ever written: the generation of either object never moved.
    assert (k.get("gptmodel", MODEL) or {})["metadata"]["generation"] == 1
    assert (k.get("ftj", RUN) or {})["metadata"]["generation"] == 1
    # Only Argo CD's field manager owns fields of the spec.
    for kind, name in (("gptmodel", MODEL), ("ftj", RUN)):
        obj = k.kubectl("get", kind, name, "-o", "json", "--show-managed-fields").stdout
        spec_owners = {m["manager"] for m in json.loads(obj)["metadata"]["managedFields"]
                       if "f:spec" in (m.get("fieldsV1") or {})}
        assert spec_owners == {"argocd-controller"}, spec_owners
