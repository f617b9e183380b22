"""vLLM Deployment and Service builders: table tests of what a user or the cluster would notice."""

import pytest

from gptops.api import (
    FineTuneJob,
    GPTModel,
    ServedRevision,
    previous_revision_from_status,
    served_revision_for,
    served_revision_from_status,
)
from gptops.builders import build_deployment, build_service

FULL = ServedRevision(revision="tiny-ft", model="/artifacts/ml/tiny-ft/model")
LORA = ServedRevision(revision="tiny-lora", model="sshleifer/tiny-gpt2", adapter="/artifacts/ml/tiny-lora/adapter",
                      lora_rank=8)


def container(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]


def argv(dep):
    return container(dep)["args"]


def opt(args, flag):
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("served", [FULL, LORA])
def test_has_the_owner_reference(served, gptmodel):
    for obj in (build_deployment(gptmodel, served), build_service(gptmodel)):
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "name": "tiny", "uid": "uid-gm",
            "controller": True, "blockOwnerDeletion": True}]


def test_requests_the_gpus(gptmodel):
    res = container(build_deployment(gptmodel, FULL))["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "2" and res["requests"]["nvidia.com/gpu"] == "2"
    assert res["limits"]["memory"] == "32Gi"


def test_pins_the_image(gptmodel):
    assert container(build_deployment(gptmodel, FULL))["image"] == "vllm/vllm-openai:v0.33.0"
    gptmodel["spec"]["serving"]["image"] = "vllm/vllm-openai:v0.10.2"
    assert container(build_deployment(gptmodel, FULL))["image"] == "vllm/vllm-openai:v0.10.2"


@pytest.mark.parametrize("served", [FULL, LORA])
def test_args_are_a_list_and_contain_no_shell(served, gptmodel):
    c = container(build_deployment(gptmodel, served))
    assert c["command"] == ["vllm", "serve"]
    assert all(isinstance(a, str) for a in c["args"])
    # a hostile extra arg stays one list item, never interpreted
    assert c["args"][-2:] == ["--seed", "1; rm -rf /"]


def test_vllm_settings_from_the_spec(gptmodel):
    args = argv(build_deployment(gptmodel, FULL))
    assert args[0] == "/artifacts/ml/tiny-ft/model"
    assert opt(args, "--served-model-name") == "tiny"
    assert opt(args, "--max-model-len") == "2048"
    assert opt(args, "--gpu-memory-utilization") == "0.9"
    assert opt(args, "--tensor-parallel-size") == "2"
    assert opt(args, "--dtype") == "auto"
    assert "--enable-prefix-caching" in args and "--enable-lora" not in args
    gptmodel["spec"]["serving"]["vllm"]["enablePrefixCaching"] = False
    assert "--no-enable-prefix-caching" in argv(build_deployment(gptmodel, FULL))


def test_lora_revision_serves_base_plus_adapter(gptmodel):
    args = argv(build_deployment(gptmodel, LORA))
    assert args[0] == "sshleifer/tiny-gpt2"
    assert opt(args, "--revision") == "main"
    assert "--enable-lora" in args
    assert opt(args, "--lora-modules") == "tiny=/artifacts/ml/tiny-lora/adapter"
    assert opt(args, "--served-model-name") == "tiny-base"
    assert opt(args, "--max-lora-rank") == "8"


def test_several_loras_on_one_server(gptmodel):
    """maxAdapters 3: one --lora-modules entry per adapter, the newest as the GPTModel's name and each older one as its
    FineTuneJob's, --max-loras sized to 3, and the rank big enough for the largest."""
    gptmodel["spec"]["serving"]["lora"] = {"maxAdapters": 3}
    older = [ServedRevision(revision="tiny-a", model=LORA.model, adapter="/artifacts/ml/tiny-a/adapter", lora_rank=32),
             ServedRevision(revision="tiny", model=LORA.model, adapter="/artifacts/ml/tiny/adapter", lora_rank=4)]
    args = argv(build_deployment(gptmodel, LORA, older))
    assert args[0] == "sshleifer/tiny-gpt2" and opt(args, "--served-model-name") == "tiny-base"
    start = args.index("--lora-modules") + 1
    assert args[start:start + 3] == ["tiny-a=/artifacts/ml/tiny-a/adapter",
                                     "tiny-tiny=/artifacts/ml/tiny/adapter",  # "tiny" is the GPTModel's own name
                                     "tiny=/artifacts/ml/tiny-lora/adapter"]
    assert opt(args, "--max-loras") == "3" and opt(args, "--max-lora-rank") == "32"
    # The default (1) keeps today's arguments: one adapter, no --max-loras.
    gptmodel["spec"]["serving"]["lora"] = {"maxAdapters": 1}
    assert "--max-loras" not in argv(build_deployment(gptmodel, LORA))


def test_lora_from_finetunejob(gptmodel, finetunejob):
    finetunejob["spec"]["training"]["method"] = "lora"
    finetunejob["spec"]["training"]["lora"] = {"r": 24}
    finetunejob["status"] = {"artifacts": {"directory": "/artifacts/ml/tiny-ft/0123456789", "digest": "sha256:d"}}
    served = served_revision_for(FineTuneJob.from_dict(finetunejob), GPTModel.from_dict(gptmodel))
    dep = build_deployment(gptmodel, served)
    args = argv(dep)
    assert opt(args, "--lora-modules") == "tiny=/artifacts/ml/tiny-ft/0123456789/adapter"
    assert dep["metadata"]["annotations"]["gptops.io/digest"] == "sha256:d"
    assert opt(args, "--max-lora-rank") == "32"


@pytest.mark.parametrize(("rank", "max_lora_rank"),
                         [(1, "1"), (2, "8"), (8, "8"), (17, "32"), (64, "64"), (65, "128"), (129, "256"),
                          (257, "320"), (320, "320"), (321, "512"), (512, "512"), (None, "64")])
def test_max_lora_rank_from_status_is_the_smallest_vllm_accepts(gptmodel, rank, max_lora_rank):
    """A Deployment rebuilt from the GPTModel's status alone (the served revision or the rollback target) still
    lets vLLM load the adapter; 64 is the guess for a status written before the rank was recorded."""
    gptmodel["status"] = {
        "servingRevision": "big", "servingArtifact": "sshleifer/tiny-gpt2",
        "servingAdapter": "/artifacts/ml/big/adapter",
        "previousRevision": "old", "previousArtifact": "sshleifer/tiny-gpt2",
        "previousAdapter": "/artifacts/ml/old/adapter",
    }
    if rank is not None:
        gptmodel["status"] |= {"servingLoraRank": rank, "previousLoraRank": rank}
    model = GPTModel.from_dict(gptmodel)
    for served in (served_revision_from_status(model), previous_revision_from_status(model)):
        assert served is not None and served.lora_rank == rank
        assert opt(argv(build_deployment(model, served)), "--max-lora-rank") == max_lora_rank


def test_labels_are_the_fixed_set_and_record_the_revision(gptmodel):
    dep = build_deployment(gptmodel, FULL)
    for labels in (dep["metadata"]["labels"], dep["spec"]["template"]["metadata"]["labels"]):
        assert set(labels) == {"app.kubernetes.io/managed-by", "app.kubernetes.io/name", "app.kubernetes.io/component",
                               "gptops.io/model", "gptops.io/revision"}
        assert labels["gptops.io/revision"] == "tiny-ft"
    assert dep["metadata"]["annotations"]["gptops.io/revision"] == "tiny-ft"
    assert "gptops.io/revision" not in dep["spec"]["selector"]["matchLabels"]
    selector = build_service(gptmodel)["spec"]["selector"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= selector.items()
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert set(build_service(gptmodel)["metadata"]["labels"]) <= set(dep["metadata"]["labels"])


def test_the_service_never_routes_to_the_models_stage_pods(gptmodel, finetunejob):
    """A stage Pod of a FineTuneJob of this model carries the model's labels; it must not receive requests."""
    from gptops.builders import build_stage_job
    selector = build_service(gptmodel)["spec"]["selector"]
    for stage in ("prepare", "train", "evaluate"):
        labels = build_stage_job(finetunejob, gptmodel, stage)["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= labels.items(), stage


def test_name_deterministic_and_short(gptmodel):
    dep = build_deployment(gptmodel, FULL)
    assert dep["metadata"]["name"] == "tiny" == build_service(gptmodel)["metadata"]["name"]
    assert dep == build_deployment(gptmodel, FULL)
    assert dep["metadata"]["annotations"]["gptops.io/spec-hash"] != \
        build_deployment(gptmodel, LORA)["metadata"]["annotations"]["gptops.io/spec-hash"]


def test_rollout_and_probes(gptmodel):
    dep = build_deployment(gptmodel, FULL)
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["progressDeadlineSeconds"] == 600
    assert dep["spec"]["replicas"] == 2
    c = container(dep)
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600


def test_pod_is_restricted_with_writable_caches(gptmodel):
    pod = build_deployment(gptmodel, FULL)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["enableServiceLinks"] is False
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/artifacts"]["readOnly"] is True
    assert "/cache" in mounts and "/tmp" in mounts
    env = {e["name"]: e for e in c["env"]}
    assert env["HOME"]["value"] == "/cache"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_api_key_and_hf_token_come_from_secrets(gptmodel):
    env = {e["name"]: e for e in container(build_deployment(gptmodel, LORA))["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vllm-key", "key": "api-key"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert all("value" not in e for e in env.values() if e["name"] in ("VLLM_API_KEY", "HF_TOKEN"))
    del gptmodel["spec"]["serving"]["apiKeySecretRef"]
    env = {e["name"] for e in container(build_deployment(gptmodel, FULL))["env"]}
    assert "VLLM_API_KEY" not in env and "HF_TOKEN" not in env


def test_service_exposes_port_8000(gptmodel):
    svc = build_service(gptmodel)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["type"] == "ClusterIP"
