"""The operator against the real local control plane: kubectl applies the examples, the operator (kopf, in this
process) creates the stage Jobs, kwok completes their Pods with the StageResult the test puts in an annotation, and
the real Job, Deployment and garbage-collector controllers do the rest."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from operator_kit import EXAMPLES, GOOD, MODEL, ROOT, RUN, Cluster, example, free_port, running_operator, wait_for

pytestmark = pytest.mark.cluster


def run_examples_to_promotion(k: Cluster) -> None:
    """Apply the examples, complete the three stages, wait for the promoted revision to be rolled out."""
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", RUN, "Promoted", "True")
    wait_for(lambda: "--enable-lora" in k.deployment_args(MODEL), "the LoRA revision in the Deployment")
    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", timeout=90)


def test_examples_go_all_the_way_to_a_ready_gptmodel(k: Cluster, operator) -> None:
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))

    # Before any promotion the model serves its source.
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    assert (k.get("deployment", MODEL) or {})["metadata"]["annotations"]["gptops.io/revision"] == "source"

    prepared = k.complete_stage(RUN, "prepare")
    k.wait_condition("ftj", RUN, "Prepared", "True")
    k.complete_stage(RUN, "train")
    k.wait_condition("ftj", RUN, "Trained", "True")
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    passed = k.wait_condition("ftj", RUN, "Passed", "True")
    assert "perplexity 42.00" in passed["message"] and "65.0%" in passed["message"]
    k.wait_condition("ftj", RUN, "Promoted", "True")

    model = wait_for(lambda: (m := k.get("gptmodel", MODEL)) and m["status"].get("servingRevision") == RUN and m,
                     "the promotion into the GPTModel")
    assert model["status"]["previousArtifact"] == "sshleifer/tiny-gpt2"  # it served its source before
    wait_for(lambda: "--enable-lora" in k.deployment_args(MODEL), "the LoRA revision in the Deployment")
    args = k.deployment_args(MODEL)
    directory = (k.get("ftj", RUN) or {})["status"]["artifacts"]["directory"]
    assert directory.startswith(f"/artifacts/{k.ns}/{RUN}/")  # the revision's own directory
    assert args[args.index("--lora-modules") + 1] == f"{MODEL}={directory}/adapter"
    assert args[0] == "sshleifer/tiny-gpt2"
    assert model["status"]["servingLoraRank"] == 8 and args[args.index("--max-lora-rank") + 1] == "8"
    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", timeout=90)
    model = k.get("gptmodel", MODEL) or {}
    ready = k.condition("gptmodel", MODEL, "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == model["metadata"]["generation"]
    assert model["status"]["endpoint"] == f"http://{MODEL}.{k.ns}.svc:8000/v1"
    assert model["status"]["readyReplicas"] == 1
    assert k.get("service", MODEL)["spec"]["ports"][0]["port"] == 8000

    ftj = k.get("ftj", RUN) or {}
    assert ftj["status"]["phase"] == "Promoted"
    assert ftj["status"]["metrics"]["perplexity"] == 42.0
    assert ftj["status"]["stages"]["prepare"]["result"]["digest"] == json.loads(prepared)["digest"]
    job = k.stage_job(RUN, "train") or {}
    assert job["metadata"]["ownerReferences"][0]["name"] == RUN
    assert "argocd.argoproj.io/instance" not in job["metadata"]["labels"]
    wanted = {"JobCreated", "ThresholdsMet", "Promoted", "DeploymentCreated"}
    wait_for(lambda: wanted <= {e["reason"] for e in k.events(RUN) + k.events(MODEL)}, f"the events {wanted}")
    # Passes woken together (kopf, a stage Job's watch event, the GPTModel after the promotion) post each of the
    # run's transitions once.
    ours = [(e["reason"], e["message"]) for e in k.events(RUN) if e["reason"] != "Logging"
            for _ in range(e.get("count") or 1)]
    assert len(ours) == len(set(ours)), sorted(ours)
    # kopf's bookkeeping lives under gptops.io; no finalizer holds deletes while the operator is away.
    assert not ftj["metadata"].get("finalizers") and not model["metadata"].get("finalizers")
    assert not [a for a in ftj["metadata"].get("annotations", {}) if a.startswith("kopf.zalando.org")]


def test_a_failed_threshold_leaves_serving_untouched(k: Cluster, operator) -> None:
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics={"perplexity": 300.0, "baselinePerplexity": 310.0})

    passed = k.wait_condition("ftj", RUN, "Passed", "False")
    assert passed["reason"] == "ThresholdsNotMet"
    assert "perplexity 300.00, needs <= 200.00" in passed["message"]
    assert k.condition("ftj", RUN, "Promoted")["status"] == "False"
    assert (k.get("ftj", RUN) or {})["status"]["phase"] == "Rejected"
    model = k.get("gptmodel", MODEL) or {}
    assert "servingRevision" not in model["status"]
    assert (k.get("deployment", MODEL) or {})["metadata"]["annotations"]["gptops.io/revision"] == "source"
    assert "--enable-lora" not in k.deployment_args(MODEL)


def test_a_failed_stage_sets_failed_with_the_pods_message(k: Cluster, operator) -> None:
    run = example("finetunejob.yaml")
    assert run["spec"]["training"]["backoffLimit"] == 2
    k.apply(example("gptmodel.yaml"), run)
    k.complete_stage(RUN, "prepare", ok=False, message="dataset.fields.text: no column 'text' in wikitext")

    failed = k.wait_condition("ftj", RUN, "Failed", "True")
    assert failed["reason"] == "StageFailed"
    # ok: false is final: the Job fails on its first Pod, backoffLimit left unused.
    prepare = k.stage_job(RUN, "prepare") or {}
    assert next(c for c in prepare["status"]["conditions"] if c["type"] == "Failed")["reason"] == "PodFailurePolicy"
    assert len(k.items("pods", f"job-name={prepare['metadata']['name']}")) == 1
    assert "no column 'text' in wikitext" in failed["message"] and k.stage_job_name(RUN, "prepare") in failed["message"]
    assert (k.get("ftj", RUN) or {})["status"]["phase"] == "Failed"
    assert k.stage_job(RUN, "train") is None
    wait_for(lambda: [e for e in k.events(RUN) if (e["type"], e["reason"]) == ("Warning", "StageFailed")],
             "a Warning event StageFailed")


def test_a_rollout_that_never_becomes_available_is_rolled_back(k: Cluster, operator) -> None:
    model = example("gptmodel.yaml")
    model["spec"]["serving"]["rolloutDeadlineSeconds"] = 30
    run = example("finetunejob.yaml")
    run["spec"]["evaluation"]["promote"] = False
    k.apply(model, run)
    k.wait_condition("gptmodel", MODEL, "Ready", "True")
    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", RUN, "Passed", "True")

    # Pin the run, asking for more GPUs than any node has: its Pods never schedule.
    broken = copy.deepcopy(model)
    broken["spec"]["serving"]["revision"] = RUN
    broken["spec"]["serving"]["resources"]["gpus"] = 16
    k.apply(broken)
    wait_for(lambda: (k.get("deployment", MODEL) or {})["metadata"]["annotations"]["gptops.io/revision"] == RUN,
             "the rollout of the pinned revision")

    degraded = k.wait_condition("gptmodel", MODEL, "Degraded", "True", timeout=120)
    assert degraded["reason"] == "RolledBack"
    assert RUN in degraded["message"] and "rolled back to revision source" in degraded["message"]
    annotations = (k.get("deployment", MODEL) or {})["metadata"]["annotations"]
    assert annotations["gptops.io/revision"] == "source"
    assert annotations["gptops.io/rolled-back-from"] == RUN
    status = (k.get("gptmodel", MODEL) or {})["status"]
    assert "servingRevision" not in status
    wait_for(lambda: [e for e in k.events(MODEL) if (e["type"], e["reason"]) == ("Warning", "RolledBack")],
             "a Warning event RolledBack")


def test_deleting_the_parents_removes_their_children(k: Cluster, operator) -> None:
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"), "-f", str(EXAMPLES / "finetunejob.yaml"))
    prepare = k.stage_job_name(RUN, "prepare")
    wait_for(lambda: k.get("deployment", MODEL) and k.get("service", MODEL), "the Deployment and Service")

    k.kubectl("delete", "ftj", RUN, "--timeout=30s")
    wait_for(lambda: k.stage_job(RUN, "prepare") is None, "the garbage collector to delete the Job")
    wait_for(lambda: not k.items("pods", f"job-name={prepare}"), "the stage Pods to go")
    k.kubectl("delete", "gptmodel", MODEL, "--timeout=30s")
    wait_for(lambda: k.get("deployment", MODEL) is None and k.get("service", MODEL) is None,
             "the garbage collector to delete the Deployment and Service")


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("gptmodel.yaml", lambda d: d["spec"]["source"].update(scratch={}),
         "set exactly one of huggingface, pvc, s3, local or scratch"),
        ("gptmodel.yaml", lambda d: d["spec"]["serving"]["vllm"].update(tensorParallelSize=4),
         "vllm.tensorParallelSize must not exceed resources.gpus"),
        ("finetunejob.yaml", lambda d: d["spec"]["evaluation"]["thresholds"].update(maxPerplexity=0.5),
         "maxPerplexity must be greater than 1"),
        ("finetunejob.yaml", lambda d: d["spec"]["dataset"].update(validationSplit=0.9),
         "validationSplit must be greater than 0 and at most 0.5"),
    ],
    ids=["two-sources", "tensor-parallel", "threshold-range", "validation-split"],
)
def test_bad_specs_are_refused_with_their_cel_messages(k: Cluster, file, edit, message) -> None:
    doc = example(file)
    edit(doc)
    result = k.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_dataset_of_a_run_is_immutable(k: Cluster) -> None:
    run = example("finetunejob.yaml")
    k.apply(run)
    run["spec"]["dataset"]["validationSplit"] = 0.2
    result = k.kubectl("apply", "-f", "-", input=yaml.safe_dump(run), check=False)
    assert result.returncode != 0 and "spec.dataset is immutable" in result.stderr


def test_the_charts_rbac_is_enough_to_run_the_operator(control_plane, k: Cluster, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's Role (watching one namespace) and CRD ClusterRole, and nothing else, carry the whole lifecycle."""
    release = f"r{k.ns[-5:]}"
    rendered = subprocess.run(
        [str(control_plane.bin_dir / "helm"), "template", release, str(ROOT / "charts" / "gptops"), "-n", k.ns,
         "--set", f"watchNamespaces={{{k.ns}}}"], capture_output=True, text=True, timeout=60, check=True).stdout
    rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in
            ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    account = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    token = k.kubectl("create", "token", account, "--duration=1h").stdout.strip()
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    try:
        with running_operator(k, kubeconfig, monkeypatch) as runner:
            run_examples_to_promotion(k)
        assert "Forbidden" not in runner.output and " 403" not in runner.output, runner.output[-4000:]
    finally:
        cluster_scoped = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in rbac
                          if d["kind"].startswith("Cluster")]
        control_plane.kubectl("delete", *cluster_scoped, "--wait=false", check=False)


def test_a_finetunejob_waits_for_its_gptmodel(k: Cluster, operator) -> None:
    k.kubectl("apply", "-f", str(EXAMPLES / "finetunejob.yaml"))
    prepared = k.wait_condition("ftj", RUN, "Prepared", "False")
    wait_for(lambda: k.condition("ftj", RUN, "Prepared").get("reason") == "ModelNotFound", "ModelNotFound")
    assert k.stage_job(RUN, "prepare") is None and MODEL in prepared["message"]
    k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"))
    wait_for(lambda: k.stage_job(RUN, "prepare"), "the prepare Job once the GPTModel exists")


def test_gptops_operator_serves_metrics_and_health(control_plane, k: Cluster) -> None:
    """`gptops operator` as a process: it reconciles, and answers on its metrics and liveness ports."""
    metrics_port, health_port = free_port(), free_port()
    gptops = str(Path(sys.executable).parent / "gptops")
    env = {**control_plane.env, "GPTOPS_WATCH_SERVER_TIMEOUT": "10"}
    proc = subprocess.Popen([gptops, "operator", "--namespace", k.ns, "--metrics-port", str(metrics_port),
                             "--health-port", str(health_port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        k.kubectl("apply", "-f", str(EXAMPLES / "gptmodel.yaml"))
        k.wait_condition("gptmodel", MODEL, "Ready", "True")

        def scrape(port: int, path: str) -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                    return response.read().decode()
            except OSError:
                return ""

        wait_for(lambda: scrape(health_port, "/healthz"), "kopf's /healthz")
        text = wait_for(lambda: (t := scrape(metrics_port, "/metrics")) and
                        'gptops_serving_revision_info{model="tiny-gpt2"' in t and t, "the metrics")
        assert f'namespace="{k.ns}",revision="source"' in text
        assert 'gptops_reconcile_total{kind="GPTModel",result="ok"}' in text
        k.kubectl("delete", "gptmodel", MODEL, "--timeout=30s")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output[-4000:]
