"""The trainer image does the job: the quickstart's pretrain FineTuneJob runs prepare, train and evaluate in it, each
stage started exactly as the operator's Job builder starts its Pod (command, arguments, environment, mounts), with
no network, a read-only root filesystem, a non-root user, and the result written where Kubernetes reads the
termination message. Then the revision is served from the same image as an engine: transformers GPTModel's
Deployment serves it, and answers a chat completion."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from gptops.api import FineTuneJob, GPTModel, ServedRevision
from gptops.api.revisions import new_revision
from gptops.api.stageresult import parse_stage_result
from gptops.builders import build_deployment
from gptops.builders.job import build_stage_job
from gptops.local.corpora import write_builtin
from gptops.reconcile.gate import decide

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "quickstart.yaml"
#: The image's own user (USER 65532 in images/*/Dockerfile).
UID = 65532
DATA_CLAIM = "data"
ARTIFACTS_CLAIM = "artifacts"


def quickstart_on_a_cluster() -> tuple[GPTModel, FineTuneJob]:
    """The quickstart's GPTModel and pretrain FineTuneJob as a cluster takes them: the dataset on a PVC (the built-in
    corpus written there), the artifacts on another."""
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(QUICKSTART.read_text())}
    model, ftj = docs["pydoc-gpt"], docs["pydoc-pretrain"]
    for doc in (model, ftj):
        doc["metadata"].update(namespace="ml", uid=f"uid-{doc['metadata']['name']}", generation=1)
    model["spec"]["artifacts"] = {"pvc": {"claimName": ARTIFACTS_CLAIM}}
    ftj["spec"]["dataset"]["source"] = {"pvc": {"claimName": DATA_CLAIM, "path": "pydoc-topics.jsonl"}}
    return GPTModel.from_dict(model), FineTuneJob.from_dict(ftj)


def docker_run_args(pod: dict, claims: dict[str, Path], termination: Path) -> list[str]:
    """A Pod's one container as `docker run` arguments, the way a kubelet would start it here: PVCs are host
    directories, emptyDirs tmpfs, the termination message a file bind-mounted at its path."""
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = ["--network=none", "--read-only", f"--user={UID}:{UID}", "--cap-drop=ALL",
            "--security-opt=no-new-privileges", "--shm-size=256m"]
    for m in c["volumeMounts"]:
        vol = volumes[m["name"]]
        ro = ",readonly" if m.get("readOnly") or (vol.get("persistentVolumeClaim") or {}).get("readOnly") else ""
        if "persistentVolumeClaim" in vol:
            host = claims[vol["persistentVolumeClaim"]["claimName"]]
            args.append(f"--mount=type=bind,source={host},target={m['mountPath']}{ro}")
        elif vol.get("emptyDir", {}).get("medium") == "Memory" and m["mountPath"] == "/dev/shm":
            continue  # --shm-size
        elif "emptyDir" in vol:
            args.append(f"--tmpfs={m['mountPath']}:rw,exec,mode=1777")
        else:
            raise AssertionError(f"volume {vol} has no counterpart here")
    args.append(f"--mount=type=bind,source={termination},target={c['terminationMessagePath']}")
    for e in c["env"]:
        assert "value" in e, f"env {e['name']} from a Secret: not in this test"
        args.append(f"--env={e['name']}={e['value']}")
    return [*args, f"--entrypoint={c['command'][0]}", c["image"], *c["args"]]


@pytest.fixture(scope="module")
def pretrained(images, tmp_path_factory):
    """The three stages of the quickstart's pretrain job, run in the trainer image: (artifacts dir, results)."""
    model, ftj = quickstart_on_a_cluster()
    work = tmp_path_factory.mktemp("trainer-image")
    data, artifacts = work / "data", work / "artifacts"
    write_builtin("builtin:pydoc-topics", data)
    artifacts.mkdir()
    subprocess.run(["chown", f"{UID}:{UID}", str(artifacts)], check=True)
    claims = {DATA_CLAIM: data, ARTIFACTS_CLAIM: artifacts}
    revision = new_revision(ftj, model)
    results, seconds = {}, {}
    for stage in ("prepare", "train", "evaluate"):
        job = build_stage_job(ftj, model, stage, revision=revision)
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == images.trainer.replace("gptops/", "ghcr.io/gptops/")
        termination = work / f"{stage}.termination-log"
        termination.touch(mode=0o666)
        termination.chmod(0o666)
        start = time.monotonic()
        run = images.run(*docker_run_args(pod, claims, termination), timeout=1800)
        seconds[stage] = round(time.monotonic() - start, 1)
        assert run.returncode == 0, f"{stage} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        results[stage] = parse_stage_result(termination.read_text(), stage=stage)
    print(f"\ntrainer image stage seconds: {json.dumps(seconds)}")
    return model, ftj, revision, artifacts, results


def test_each_stage_writes_its_result_to_the_termination_message(pretrained):
    _, _, revision, artifacts, results = pretrained
    for stage in ("prepare", "train", "evaluate"):
        result = results[stage]
        assert result is not None, f"{stage}: no stage result in the termination message"
        assert result.ok and result.stage == stage, result.message
    # the train stage's artifact paths are where the Pod sees the claim, and the files are on the volume
    model_dir = results["train"].artifacts["model"]
    assert model_dir.startswith(revision.directory + "/")
    host_model = artifacts / Path(model_dir).relative_to("/artifacts")
    assert (host_model / "config.json").is_file() and list(host_model.glob("*.safetensors"))
    # written by the image's user on the volume
    assert (host_model / "config.json").stat().st_uid == UID


def test_the_quickstart_gate_passes_on_what_evaluate_reported(pretrained):
    _, ftj, _, _, results = pretrained
    metrics = results["evaluate"].metrics
    assert metrics["perplexity"] < metrics["baselinePerplexity"]
    decision = decide(ftj.spec.evaluation.thresholds.to_dict(), metrics)
    assert decision.passed, decision.message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_trainer_image_serves_the_revision_on_cpu(pretrained, images, tmp_path):
    """engine: transformers: the Deployment's init container and server, run as the kubelet would, answer a chat
    completion for the GPTModel's name on the Service's port (published on 127.0.0.1 only)."""
    model, _, _, artifacts, results = pretrained
    doc = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"]["serving"] = {"engine": "transformers", "resources": {"gpus": 1}}
    cpu_model = GPTModel.from_dict(doc)
    served = ServedRevision(revision="pydoc-pretrain", model=results["train"].artifacts["model"])
    pod = build_deployment(cpu_model, served)["spec"]["template"]["spec"]
    (init,), (server,) = pod["initContainers"], pod["containers"]
    assert "nvidia.com/gpu" not in json.dumps(server["resources"])

    # The init container writes the link into the "served" emptyDir: a host directory shared by both containers.
    served_dir = tmp_path / "served"
    served_dir.mkdir(mode=0o777)
    served_dir.chmod(0o777)
    link = images.run("--network=none", "--read-only", f"--user={UID}:{UID}", "--cap-drop=ALL",
                      f"--mount=type=bind,source={served_dir},target=/served", f"--entrypoint={init['command'][0]}",
                      init["image"], *init["command"][1:], timeout=120)
    assert link.returncode == 0, link.stderr

    port = free_port()
    name = f"gptops-serve-test-{port}"
    args = ["-d", f"--name={name}", f"--publish=127.0.0.1:{port}:8000", "--read-only", f"--user={UID}:{UID}",
            "--cap-drop=ALL", "--security-opt=no-new-privileges",
            f"--mount=type=bind,source={artifacts},target=/artifacts,readonly",
            f"--mount=type=bind,source={served_dir},target=/served,readonly",
            "--tmpfs=/tmp:rw,exec,mode=1777", "--tmpfs=/cache:rw,exec,mode=1777",
            f"--workdir={server['workingDir']}"]
    args += [f"--env={e['name']}={e['value']}" for e in server["env"]]
    started = images.run(*args, f"--entrypoint={server['command'][0]}", server["image"], *server["command"][1:],
                         *server["args"], timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        health = f"http://127.0.0.1:{port}{server['readinessProbe']['httpGet']['path']}"
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(health, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run([images.docker, "logs", name], capture_output=True, text=True, timeout=60)
                pytest.fail(f"{health} not healthy in 300 s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(2)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120, max_retries=0)
        reply = client.chat.completions.create(model=model.name, max_tokens=16,
                                               messages=[{"role": "user", "content": "What is a list?"}])
        assert reply.choices[0].message.content
    finally:
        subprocess.run([images.docker, "rm", "-f", name], capture_output=True, timeout=120)
