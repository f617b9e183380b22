"""spec.serving.engine: transformers on the real control plane: the API server stores it without the vLLM image
default, the operator's Deployment runs `transformers serve` from the trainer image with no GPU request and an init
container that links the promoted revision under the model's name, kwok runs its Pods (init container included) and
the GPTModel becomes Ready; the CEL rules refuse vLLM-only settings with this engine."""

from __future__ import annotations

import copy

import pytest
import yaml

from gptops.api.constants import DEFAULT_TRAINER_IMAGE
from operator_kit import Cluster, wait_for
from test_revisions_cluster import GPTMODEL, MODEL, finetunejob

pytestmark = pytest.mark.cluster

RUN = "cpu-ft"


def cpu_model() -> dict:
    model = copy.deepcopy(GPTMODEL)
    model["spec"]["serving"]["engine"] = "transformers"
    model["spec"]["serving"]["resources"] = {"cpu": "2", "memory": "4Gi"}
    return model


def test_a_cpu_model_is_served_by_transformers_from_the_trainer_image(k: Cluster, operator) -> None:
    k.apply(cpu_model(), finetunejob(RUN))
    stored = k.get("gptmodel", MODEL) or {}
    assert "image" not in stored["spec"]["serving"]  # no vLLM image filled in by the CRD
    assert stored["spec"]["serving"]["resources"]["gpus"] == 1  # the CRD's default, which this engine ignores

    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics={"perplexity": 42.0})
    k.wait_condition("ftj", RUN, "Promoted", "True")
    directory = (k.get("ftj", RUN) or {})["status"]["artifacts"]["directory"]

    def promoted_pod_spec():
        dep = k.get("deployment", MODEL) or {}
        spec = dep.get("spec", {}).get("template", {}).get("spec", {})
        inits = spec.get("initContainers") or []
        return spec if inits and inits[0]["command"][2] == f"{directory}/model" else None

    pod = wait_for(promoted_pod_spec, "the promoted revision in the Deployment", timeout=90)
    (server,) = pod["containers"]
    (link,) = pod["initContainers"]
    assert server["image"] == link["image"] == DEFAULT_TRAINER_IMAGE
    assert server["command"] == ["transformers", "serve"]
    assert server["args"] == [MODEL, "--host", "0.0.0.0", "--port", "8000", "--device", "cpu"]
    assert server["workingDir"] == "/served"
    assert link["command"] == ["ln", "-s", f"{directory}/model", f"/served/{MODEL}"]
    assert "nvidia.com/gpu" not in str(server["resources"]) and server["resources"]["requests"]["cpu"] == "2"
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"

    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", timeout=120)
    ready = k.condition("gptmodel", MODEL, "Ready")
    assert ready["status"] == "True"
    pods = k.items("pods", f"gptops.io/model={MODEL},app.kubernetes.io/component=server")
    assert pods and all(p["spec"]["initContainers"][0]["name"] == "link-model" for p in pods)


@pytest.mark.parametrize(("field", "value"), [("autoscaling", {"maxReplicas": 2}),
                                              ("apiKeySecretRef", {"name": "key"})])
def test_vllm_only_settings_are_refused_with_this_engine(k: Cluster, field, value) -> None:
    model = cpu_model()
    model["spec"]["serving"][field] = value
    result = k.kubectl("apply", "-f", "-", input=yaml.safe_dump(model), check=False)
    assert result.returncode != 0
    assert f"serving.{field} needs engine vllm" in result.stderr
