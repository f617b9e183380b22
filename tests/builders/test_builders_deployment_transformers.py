"""spec.serving.engine: transformers: the Deployment runs `transformers serve` from the trainer image on CPU."""

import pytest

from gptops.api import GPTModel, ServedRevision
from gptops.builders import build_deployment

FULL = ServedRevision(revision="tiny-ft", model="/artifacts/ml/tiny-ft/abc123/model")
LORA = ServedRevision(revision="tiny-lora", model="/artifacts/ml/tiny-ft/abc123/model",
                      adapter="/artifacts/ml/tiny-lora/def456/adapter", lora_rank=8)
HUB = ServedRevision(revision=None, model="sshleifer/tiny-gpt2")


@pytest.fixture
def cpu_model(gptmodel):
    serving = gptmodel["spec"]["serving"]
    serving["engine"] = "transformers"
    for key in ("vllm", "apiKeySecretRef", "nodeSelector", "tolerations"):
        serving.pop(key)
    serving["resources"] = {"cpu": "2", "memory": "4Gi"}
    return gptmodel


def pod(dep):
    return dep["spec"]["template"]["spec"]


def container(dep):
    return pod(dep)["containers"][0]


def env(c):
    return {e["name"]: e.get("value") for e in c["env"]}


def test_serves_with_transformers_from_the_trainer_image(cpu_model):
    c = container(build_deployment(cpu_model, FULL))
    assert c["name"] == "transformers"
    assert c["image"] == "ghcr.io/gptops/trainer:0.1.0"
    assert c["command"] == ["transformers", "serve"]
    # Clients ask for the GPTModel's name, as with vLLM; the server is pinned to it, on CPU, on the Service's port.
    assert c["args"] == ["tiny", "--host", "0.0.0.0", "--port", "8000", "--device", "cpu"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    cpu_model["spec"]["serving"]["image"] = "registry.local/trainer:dev"
    assert container(build_deployment(cpu_model, FULL))["image"] == "registry.local/trainer:dev"


def test_requests_no_gpu_even_with_the_default_gpus(cpu_model):
    cpu_model["spec"]["serving"]["resources"]["gpus"] = 1  # what the CRD's default fills in
    res = container(build_deployment(cpu_model, FULL))["resources"]
    assert res == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    assert "VLLM_CACHE_ROOT" not in env(container(build_deployment(cpu_model, FULL)))


def test_probes_on_the_health_path(cpu_model):
    c = container(build_deployment(cpu_model, FULL))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600


@pytest.mark.parametrize(("served", "target"), [(FULL, FULL.model), (LORA, LORA.adapter)])
def test_an_init_container_links_the_revision_under_the_model_name(cpu_model, served, target):
    p = pod(build_deployment(cpu_model, served))
    (init,) = p["initContainers"]
    assert init["command"] == ["ln", "-s", target, "/served/tiny"]
    assert init["image"] == p["containers"][0]["image"]
    assert init["securityContext"]["runAsNonRoot"] and init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    c = p["containers"][0]
    assert c["workingDir"] == "/served"
    assert {"name": "served", "mountPath": "/served", "readOnly": True} in c["volumeMounts"]
    assert {"name": "served", "emptyDir": {}} in p["volumes"]
    # the revision's files are read from the artifacts volume, read-only, and nothing from a hub
    assert {"name": "artifacts", "mountPath": "/artifacts", "readOnly": True} in c["volumeMounts"]
    assert env(c)["HF_HUB_OFFLINE"] == "1"
    assert p["securityContext"]["runAsNonRoot"] is True


def test_a_hub_source_is_served_under_its_repository_id(cpu_model):
    p = pod(build_deployment(cpu_model, HUB))
    c = p["containers"][0]
    assert c["args"][0] == "sshleifer/tiny-gpt2"
    assert "initContainers" not in p and "workingDir" not in c
    assert "HF_HUB_OFFLINE" not in env(c)
    assert any(e["name"] == "HF_TOKEN" for e in c["env"])  # the source's token secret, for the download


def test_vllm_stays_the_default(gptmodel):
    c = container(build_deployment(gptmodel, FULL))
    assert c["command"] == ["vllm", "serve"] and c["image"] == "vllm/vllm-openai:v0.33.0"
    assert "initContainers" not in pod(build_deployment(gptmodel, FULL))


def test_a_new_engine_rolls_the_pods(gptmodel):
    vllm = build_deployment(gptmodel, FULL)["metadata"]["annotations"]["gptops.io/spec-hash"]
    gptmodel["spec"]["serving"]["engine"] = "transformers"
    gptmodel["spec"]["serving"].pop("apiKeySecretRef")
    cpu = build_deployment(gptmodel, FULL)["metadata"]["annotations"]["gptops.io/spec-hash"]
    assert vllm != cpu


@pytest.mark.parametrize(("field", "value"), [("autoscaling", {"maxReplicas": 3}),
                                              ("apiKeySecretRef", {"name": "key"})])
def test_vllm_only_settings_are_refused_with_the_field_named(cpu_model, field, value):
    cpu_model["spec"]["serving"][field] = value
    with pytest.raises(ValueError, match=f"serving.{field} needs engine vllm"):
        GPTModel.from_dict(cpu_model)
