"""Stage Job builder: table tests of what a user or the cluster would notice."""

import json
import re

import pytest

from gptops.api import FineTuneJob, GPTModel, new_revision
from gptops.api.constants import LABEL_MANAGED_BY
from gptops.builders import BuildError, build_rendezvous_service, build_stage_children, build_stage_job

STAGES = ["prepare", "train", "evaluate"]
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
FIXED_LABEL_KEYS = {"app.kubernetes.io/managed-by", "app.kubernetes.io/name", "app.kubernetes.io/component",
                    "gptops.io/model", "gptops.io/finetunejob", "gptops.io/stage", "gptops.io/revision-key",
                    "gptops.io/spec-key"}


def revision(finetunejob, gptmodel, start_model=None):
    return new_revision(FineTuneJob.from_dict(finetunejob), GPTModel.from_dict(gptmodel), start_model)


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("stage", STAGES)
def test_has_the_owner_reference(stage, finetunejob, gptmodel):
    job = build_stage_job(finetunejob, gptmodel, stage)
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "name": "tiny-ft", "uid": "uid-ftj",
        "controller": True, "blockOwnerDeletion": True}]


@pytest.mark.parametrize("stage", STAGES)
def test_name_deterministic_and_short(stage, finetunejob, gptmodel):
    job = build_stage_job(finetunejob, gptmodel, stage)
    rev = revision(finetunejob, gptmodel)
    key = rev.eval_key if stage == "evaluate" else rev.key
    assert job["metadata"]["name"] == f"tiny-ft-{stage}-{key}"
    assert job == build_stage_job(finetunejob, gptmodel, stage)
    finetunejob["metadata"]["generation"] = 9  # a new generation of the same spec: the same Job
    assert build_stage_job(finetunejob, gptmodel, stage)["metadata"]["name"] == job["metadata"]["name"]
    finetunejob["metadata"]["name"] = "a-very-long-fine-tune-job-name-" * 5
    long = build_stage_job(finetunejob, gptmodel, stage)["metadata"]["name"]
    assert len(long) <= 63 and DNS1123.match(long)


@pytest.mark.parametrize("stage", STAGES)
def test_labels_are_the_fixed_set(stage, finetunejob, gptmodel):
    job = build_stage_job(finetunejob, gptmodel, stage)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert set(labels) == FIXED_LABEL_KEYS
        assert labels[LABEL_MANAGED_BY] == "gptops"
        assert "argocd.argoproj.io/instance" not in labels
        assert labels["gptops.io/stage"] == stage
        assert labels["gptops.io/revision-key"] == revision(finetunejob, gptmodel).key


@pytest.mark.parametrize(("stage", "gpus"), [("prepare", None), ("train", "4"), ("evaluate", "1")])
def test_requests_the_gpus(stage, gpus, finetunejob, gptmodel):
    res = container(build_stage_job(finetunejob, gptmodel, stage))["resources"]
    assert res.get("limits", {}).get("nvidia.com/gpu") == gpus
    assert res["requests"].get("nvidia.com/gpu") == gpus
    assert res["requests"]["cpu"] == "8" and res["limits"]["memory"] == "64Gi"


def test_pins_the_image_and_allows_override(finetunejob, gptmodel):
    assert container(build_stage_job(finetunejob, gptmodel, "train"))["image"] == "ghcr.io/gptops/trainer:0.1.0"
    finetunejob["spec"]["training"]["image"] = "registry.local/trainer:dev"
    assert container(build_stage_job(finetunejob, gptmodel, "train"))["image"] == "registry.local/trainer:dev"
    assert container(build_stage_job(finetunejob, gptmodel, "train", image="x:1"))["image"] == "x:1"


@pytest.mark.parametrize("stage", STAGES)
def test_args_are_a_list_and_contain_no_shell(stage, finetunejob, gptmodel):
    c = container(build_stage_job(finetunejob, gptmodel, stage))
    argv = c["command"] + c["args"]
    assert all(isinstance(a, str) for a in argv)
    assert argv[0] not in ("sh", "bash", "/bin/sh", "/bin/bash") and "-c" not in argv
    assert _stage_argv(argv)[1:3] == ["gptops.pipeline", stage]
    assert argv[argv.index("--artifacts") + 1] == f"/artifacts/ml/tiny-ft/{revision(finetunejob, gptmodel).key}"
    ftj = json.loads(argv[argv.index("--spec-json") + 1])
    assert ftj["kind"] == "FineTuneJob" and ftj["spec"]["training"]["backoffLimit"] == 5
    model = json.loads(argv[argv.index("--model-spec-json") + 1])
    assert model["kind"] == "GPTModel" and model["spec"]["source"]["huggingface"]["repo"] == "sshleifer/tiny-gpt2"
    assert "status" not in model and "--start-model" not in argv


def test_start_model_is_passed_when_the_operator_chose_one(finetunejob, gptmodel):
    rev = revision(finetunejob, gptmodel, "/artifacts/ml/prev/k/model")
    job = build_stage_job(finetunejob, gptmodel, "train", revision=rev)
    c = container(job)
    assert c["args"][c["args"].index("--start-model") + 1] == "/artifacts/ml/prev/k/model"
    assert job["metadata"]["annotations"]["gptops.io/start-model"] == "/artifacts/ml/prev/k/model"
    # Another starting point is another revision: its own directory.
    assert c["args"][c["args"].index("--artifacts") + 1] == rev.directory != revision(finetunejob, gptmodel).directory


def test_each_training_change_writes_its_own_directory_and_the_gate_does_not(finetunejob, gptmodel):
    def directory():
        c = container(build_stage_job(finetunejob, gptmodel, "train"))
        return c["args"][c["args"].index("--artifacts") + 1]

    first = directory()
    finetunejob["spec"]["evaluation"] = {"thresholds": {"maxPerplexity": 3}, "promote": True}
    finetunejob["spec"]["training"]["backoffLimit"] = 1  # how a Pod is retried does not change the weights
    assert directory() == first
    finetunejob["spec"]["training"]["learningRate"] = 0.01
    assert directory() != first


def test_evaluate_writes_its_report_beside_the_weights_and_prepare_sweeps_only_other_revisions(finetunejob, gptmodel):
    rev = revision(finetunejob, gptmodel)
    args = container(build_stage_job(finetunejob, gptmodel, "evaluate"))["args"]
    assert args[args.index("--evaluation-dir") + 1] == f"{rev.directory}/eval-{rev.eval_key}"
    args = container(build_stage_job(finetunejob, gptmodel, "prepare", retain=("0000000000", rev.key)))["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--retain"] == ["0000000000"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_pod_lost_to_a_disruption_does_not_count_as_a_failure(stage, finetunejob, gptmodel):
    policy = build_stage_job(finetunejob, gptmodel, stage)["spec"]["podFailurePolicy"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in policy["rules"]


@pytest.mark.parametrize("stage", STAGES)
def test_pod_is_restricted_and_reports_results(stage, finetunejob, gptmodel):
    job = build_stage_job(finetunejob, gptmodel, stage)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/artifacts" in mounts and "/dev/shm" in mounts and "/cache" in mounts
    assert mounts["/mnt/pvc/data"]["readOnly"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_HOME"]["value"].startswith("/cache")
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


def test_node_selector_and_tolerations_from_the_spec(finetunejob, gptmodel):
    pod = build_stage_job(finetunejob, gptmodel, "train")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "train", "effect": "NoSchedule"}]


def test_single_node_train_is_a_plain_job(finetunejob, gptmodel):
    children = build_stage_children(finetunejob, gptmodel, "train")
    assert [c["kind"] for c in children] == ["Job"]
    assert "completionMode" not in children[0]["spec"]


TORCHRUN = ["python", "-m", "gptops.pipeline.torchrun"]


def _stage_argv(argv: list[str]) -> list[str]:
    """The stage's own arguments: from the last `-m` (after the launcher's)."""
    at = len(argv) - 1 - argv[::-1].index("-m")
    return argv[at:]


@pytest.mark.parametrize(("stage", "nodes", "gpus", "launcher", "requested"), [
    ("train", 1, 0, ["python"], None),
    ("train", 1, 1, ["python"], "1"),
    ("train", 1, 4, [*TORCHRUN, "--standalone", "--nproc-per-node", "4"], "4"),  # DDP, not DataParallel
    ("train", 2, 4, [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "4"], "4"),
    ("evaluate", 1, 4, ["python"], "1"),  # evaluation runs on one device: it requests one
    ("evaluate", 1, 0, ["python"], None),
    ("prepare", 1, 4, ["python"], None),
    ("evaluate", 2, 4, ["python"], "1"),
])
def test_launcher_and_gpus_by_stage_nodes_and_gpus(stage, nodes, gpus, launcher, requested, finetunejob, gptmodel):
    finetunejob["spec"]["training"]["resources"].update(nodes=nodes, gpus=gpus)
    c = container(build_stage_job(finetunejob, gptmodel, stage))
    argv = c["command"] + c["args"]
    assert argv[:len(launcher)] == launcher
    assert _stage_argv(argv)[:3] == ["-m", "gptops.pipeline", stage]
    assert c["resources"].get("limits", {}).get("nvidia.com/gpu") == requested


def test_multi_node_train_is_an_indexed_job_with_a_static_rendezvous(finetunejob, gptmodel):
    finetunejob["spec"]["training"]["resources"]["nodes"] = 3
    finetunejob["spec"]["training"]["backoffLimit"] = 2
    svc, job = build_stage_children(finetunejob, gptmodel, "train")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == job["metadata"]["name"]
    c = pod["containers"][0]
    argv = c["command"] + c["args"]
    assert argv[:3] == TORCHRUN
    opt = {argv[i]: argv[i + 1] for i in range(3, argv.index("-m", 3), 2)}
    name = job["metadata"]["name"]
    # Static: each node knows its rank and the master; nobody decides by resolving a DNS name whether it hosts.
    assert opt == {"--nnodes": "3", "--nproc-per-node": "4", "--node-rank": "$(NODE_RANK)",
                   "--master-addr": f"{name}-0.{name}", "--master-port": "29500", "--max-restarts": "0"}
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert _stage_argv(argv)[:3] == ["-m", "gptops.pipeline", "train"]
    # A lost node ends its peers too: the limit is per index, so the group restarts together once per fault.
    assert "backoffLimit" not in job["spec"]
    assert job["spec"]["backoffLimitPerIndex"] == 2 and job["spec"]["maxFailedIndexes"] == 0
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-ftj"
    # prepare and evaluate stay single-node
    assert [c["kind"] for c in build_stage_children(finetunejob, gptmodel, "evaluate")] == ["Job"]
    assert build_rendezvous_service(finetunejob, revision(finetunejob, gptmodel))["metadata"]["name"] == name


def test_missing_artifacts_pvc_is_a_build_error(finetunejob, gptmodel):
    del gptmodel["spec"]["artifacts"]
    with pytest.raises(BuildError, match="artifacts.pvc"):
        build_stage_job(finetunejob, gptmodel, "prepare")


def test_local_sources_are_refused_in_a_cluster(finetunejob, gptmodel):
    finetunejob["spec"]["dataset"]["source"] = {"local": {"path": "data.txt"}}
    with pytest.raises(BuildError, match="gptops run only"):
        build_stage_job(finetunejob, gptmodel, "prepare")


def test_configmap_dataset_is_mounted(finetunejob, gptmodel):
    finetunejob["spec"]["dataset"]["source"] = {"configMap": {"name": "corpus", "key": "data.txt"}}
    pod = build_stage_job(finetunejob, gptmodel, "prepare")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/etc/gptops/configmaps/corpus" in mounts


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_that_reported_failure_is_not_retried_but_a_lost_pod_is(stage, finetunejob, gptmodel):
    rules = build_stage_job(finetunejob, gptmodel, stage)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1] == {"action": "FailJob",
                        "onExitCodes": {"containerName": stage, "operator": "In", "values": [1]}}


@pytest.mark.parametrize("stage", STAGES)
def test_a_queue_creates_the_job_suspended_in_kueue(stage, finetunejob, gptmodel):
    gptmodel["spec"]["scheduling"] = {"queueName": "shared-gpus"}
    job = build_stage_job(finetunejob, gptmodel, stage)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "shared-gpus"
    # Kueue reads the queue from the Job; its Pods keep the fixed label set.
    assert set(job["spec"]["template"]["metadata"]["labels"]) == FIXED_LABEL_KEYS
    finetunejob["spec"]["scheduling"] = {"queueName": "team-a"}  # the FineTuneJob's own queue wins
    assert build_stage_job(finetunejob, gptmodel, stage)["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_a_queued_multinode_job_is_one_workload(finetunejob, gptmodel):
    """Kueue admits a Job's Pods together: the whole Indexed Job is suspended and queued, so no rank starts alone."""
    finetunejob["spec"]["training"]["resources"] = {"gpus": 8, "nodes": 3}
    finetunejob["spec"]["scheduling"] = {"queueName": "gpus"}
    service, job = build_stage_children(finetunejob, gptmodel, "train")
    assert job["spec"]["suspend"] is True and job["spec"]["parallelism"] == job["spec"]["completions"] == 3
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert "kueue.x-k8s.io/queue-name" not in service["metadata"]["labels"]


@pytest.mark.parametrize("bad", ["", "Team_A", "-a", "a" * 64])
def test_a_bad_queue_name_is_refused_naming_the_field(bad, finetunejob):
    finetunejob["spec"]["scheduling"] = {"queueName": bad}
    with pytest.raises(ValueError, match="scheduling.queueName"):
        FineTuneJob.from_dict(finetunejob)
