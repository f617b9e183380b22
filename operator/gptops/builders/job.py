"""Stage Jobs of a FineTuneJob (prepare, train, evaluate), including multi-node training as an Indexed Job whose
Pods run torchrun with a static rendezvous on index 0, and single-node multi-GPU training under torchrun --standalone.
Pure: returns dicts; imports gptops.api only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gptops.api.constants import (
    ANNOTATION_START_MODEL,
    API_VERSION,
    ARTIFACTS_MOUNT,
    EXIT_STAGE_FAILED,
    LABEL_KUEUE_QUEUE,
    LABEL_FINETUNEJOB,
    LABEL_REVISION_KEY,
    LABEL_STAGE,
    RDZV_PORT,
    STAGE_EVALUATE,
    STAGE_PREPARE,
    STAGE_TRAIN,
    STAGES,
    TERMINATION_LOG,
    fixed_labels,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel
from gptops.api.names import child_name
from gptops.api.revisions import Revision, new_revision
from gptops.builders.common import (
    BuildError,
    as_model,
    cache_volumes,
    configmap_volume,
    container_security_context,
    metadata,
    pod_security_context,
    pvc_volume,
    resources,
    secret_env,
    shm_volume,
    tolerations,
)

#: The exit code of a stage that rejected its input (gptops.pipeline.__main__): its Job fails at once.
STAGE_FAILED_EXIT_CODE = EXIT_STAGE_FAILED

#: The environment variable that holds a multi-node training Pod's node rank: its Indexed Job completion index.
NODE_RANK_ENV = "NODE_RANK"
#: The annotation the Job controller puts the completion index in, read through the downward API.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


#: torchrun, as the stage Pods start it: torch's own launcher, with a worker's exit code kept (gptops.pipeline.torchrun).
TORCHRUN = ["python", "-m", "gptops.pipeline.torchrun"]


def torchrun_static(nodes: int, procs_per_node: int, master_addr: str, *, node_rank: str = f"$({NODE_RANK_ENV})",
                    master_port: int = RDZV_PORT) -> list[str]:
    """torchrun with a static rendezvous, as Kubeflow Trainer and JobSet start it: every node knows its rank and the
    master's address, and rank 0 hosts the store. The c10d backend would instead let each node decide whether it hosts
    the store by resolving the master's DNS name, and with the record not yet published nobody hosts it
    (pytorch/elastic#165). `--max-restarts 0`: a failed peer ends the Pod, and the Job restarts the group."""
    return [*TORCHRUN, "--nnodes", str(nodes), "--nproc-per-node", str(procs_per_node), "--node-rank", node_rank,
            "--master-addr", master_addr, "--master-port", str(master_port), "--max-restarts", "0"]


def stage_gpus(ftj: FineTuneJob, stage: str) -> int:
    """GPUs a stage's Pod requests: none to prepare, one to evaluate (it runs on one device), all to train."""
    gpus = ftj.spec.training.resources.gpus
    if stage == STAGE_PREPARE:
        return 0
    return min(gpus, 1) if stage == STAGE_EVALUATE else gpus


def stage_queue(ftj: FineTuneJob, model: GPTModel | None) -> str | None:
    """The Kueue LocalQueue of a FineTuneJob's stage Jobs: its own spec.scheduling, else its GPTModel's, else none."""
    for spec in (ftj.spec, model.spec if model is not None else None):
        if spec is not None and spec.scheduling is not None and spec.scheduling.queue_name:
            return spec.scheduling.queue_name
    return None


def stage_job_name(ftj: FineTuneJob | Mapping[str, Any], stage: str, revision: Revision) -> str:
    """`<ftj>-<stage>-<key>`: the revision's key (the evaluation key for evaluate), DNS-safe and short enough for
    Indexed Pod hostnames. The same spec gives the same names, so an edit of the gate alone starts no Job."""
    ftj = as_model(FineTuneJob, ftj)
    return child_name(ftj.name, stage, revision.stage_key(stage))


def stage_labels(ftj: FineTuneJob, stage: str, revision: Revision) -> dict[str, str]:
    return fixed_labels(component=stage, model=ftj.spec.model.name, finetunejob=ftj.name, stage=stage,
                        revision_key=revision.key, spec_key=revision.spec_key)


def stage_selector(ftj: FineTuneJob, stage: str, revision: Revision) -> dict[str, str]:
    """Labels that pick this stage's Pods (the multi-node rendezvous Service selects with them)."""
    labels = stage_labels(ftj, stage, revision)
    return {k: labels[k] for k in (LABEL_FINETUNEJOB, LABEL_STAGE, LABEL_REVISION_KEY)}


def is_multinode(ftj: FineTuneJob, stage: str) -> bool:
    return stage == STAGE_TRAIN and ftj.spec.training.resources.nodes > 1


def stage_spec_json(ftj: FineTuneJob, model: GPTModel) -> tuple[str, str]:
    """(--spec-json, --model-spec-json): the FineTuneJob and GPTModel as the stage reads them (camelCase, defaults
    filled in, no status: the operator decides where training starts and passes --start-model). No secret values."""
    def doc(obj: FineTuneJob | GPTModel, meta: dict[str, Any]) -> str:
        body = {"apiVersion": API_VERSION, "kind": obj.kind, "metadata": meta, "spec": obj.spec.to_dict()}
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    return (doc(ftj, {"name": ftj.name, "namespace": ftj.namespace}),
            doc(model, {"name": model.name, "namespace": model.namespace}))


def _source_volumes_and_env(ftj: FineTuneJob, model: GPTModel) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Volumes, mounts, env and envFrom for the model and dataset sources (PVCs, ConfigMaps, Secrets)."""
    volumes: list[dict] = []
    mounts: list[dict] = []
    env: list[dict] = []
    env_from: list[dict] = []
    claims: list[str] = []
    src, data = model.spec.source, ftj.spec.dataset.source
    if src.pvc is not None:
        claims.append(src.pvc.claim_name)
    if data.pvc is not None and data.pvc.claim_name not in claims:
        claims.append(data.pvc.claim_name)
    for claim in claims:
        vol, mount = pvc_volume(claim, read_only=True)
        volumes.append(vol)
        mounts.append(mount)
    if data.config_map is not None:
        vol, mount = configmap_volume(data.config_map.name)
        volumes.append(vol)
        mounts.append(mount)
    token = (src.huggingface.token_secret_ref if src.huggingface else None) or (
        data.huggingface.token_secret_ref if data.huggingface else None)
    if token is not None:
        env.append(secret_env("HF_TOKEN", token.name, token.key))
    s3_secrets = {s.credentials_secret_ref.name for s in (src.s3, data.s3) if s and s.credentials_secret_ref}
    # The Secret holds AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN, AWS_REGION).
    env_from += [{"secretRef": {"name": name}} for name in sorted(s3_secrets)]
    return volumes, mounts, env, env_from


def build_stage_job(
    ftj: FineTuneJob | Mapping[str, Any],
    model: GPTModel | Mapping[str, Any],
    stage: str,
    *,
    revision: Revision | None = None,
    retain: tuple[str, ...] = (),
    image: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `stage` of `revision` (default: the spec's revision from the GPTModel's source).

    The Job writes only under the revision's directory; `retain` (prepare only) names the other revisions of this
    FineTuneJob whose directories must survive the retention sweep (served, previous). `image` overrides
    spec.training.image. Raises BuildError when the GPTModel has no artifacts PVC.
    """
    ftj = as_model(FineTuneJob, ftj)
    model = as_model(GPTModel, model)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if model.spec.artifacts.pvc is None:
        raise BuildError(f"GPTModel {model.name}: spec.artifacts.pvc.claimName is required to run in a cluster")
    for where, src in (("spec.source", model.spec.source.kind), ("spec.dataset.source", ftj.spec.dataset.source.kind)):
        if src == "local":
            raise BuildError(f"{where}.local is for gptops run only; use pvc, s3, url, huggingface or configMap")
    rev = revision or new_revision(ftj, model)
    training = ftj.spec.training
    name = stage_job_name(ftj, stage, rev)
    labels = stage_labels(ftj, stage, rev)

    ftj_json, model_json = stage_spec_json(ftj, model)
    stage_args = ["-m", "gptops.pipeline", stage, "--spec-json", ftj_json, "--model-spec-json", model_json,
                  "--artifacts", rev.directory]
    if rev.start_model:
        stage_args += ["--start-model", rev.start_model]
    if stage == STAGE_EVALUATE:
        stage_args += ["--evaluation-dir", rev.evaluation_directory]
    if stage == STAGE_PREPARE:
        stage_args += [arg for key in sorted(set(retain) - {rev.key}) for arg in ("--retain", key)]
    nodes = training.resources.nodes if is_multinode(ftj, stage) else 1
    gpus = stage_gpus(ftj, stage)
    if nodes > 1:
        command = [*torchrun_static(nodes, gpus, f"{name}-0.{name}"), *stage_args]
    elif stage == STAGE_TRAIN and gpus > 1:
        # One Pod, several GPUs: one process per GPU (DDP). Plain python would leave the Trainer on DataParallel.
        command = [*TORCHRUN, "--standalone", "--nproc-per-node", str(gpus), *stage_args]
    else:
        command = ["python", *stage_args]

    volumes, mounts, env, env_from = _source_volumes_and_env(ftj, model)
    artifacts_vol = {"name": "artifacts",
                     "persistentVolumeClaim": {"claimName": model.spec.artifacts.pvc.claim_name}}
    shm_vol, shm_mount = shm_volume()
    cache_vols, cache_mounts, cache_env = cache_volumes()
    container: dict[str, Any] = {
        "name": stage,
        "image": image or training.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command[:1],
        "args": command[1:],
        "env": [*cache_env, {"name": "PYTHONUNBUFFERED", "value": "1"},
                {"name": "GPTOPS_STAGE", "value": stage}, *env],
        "resources": resources(gpus, training.resources.cpu, training.resources.memory),
        "volumeMounts": [{"name": "artifacts", "mountPath": ARTIFACTS_MOUNT}, shm_mount, *cache_mounts, *mounts],
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    if nodes > 1:
        container["ports"] = [{"name": "rdzv", "containerPort": RDZV_PORT}]
        container["env"].append({"name": NODE_RANK_ENV, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}})

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [artifacts_vol, shm_vol, *cache_vols, *volumes],
    }
    if training.node_selector:
        pod_spec["nodeSelector"] = dict(training.node_selector)
    if training.tolerations:
        pod_spec["tolerations"] = tolerations(training.tolerations)

    job_spec: dict[str, Any] = {
        "backoffLimit": training.backoff_limit,
        # A Pod lost to a disruption (node drained or gone, preemption, eviction) is retried without counting
        # against backoffLimit: training resumes from its checkpoint, so a lost node is not a failed run. A stage
        # that reported ok: false exits 1: bad input fails the same way every time, so the Job fails at once.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": stage, "operator": "In",
                                                  "values": [STAGE_FAILED_EXIT_CODE]}},
        ]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if nodes > 1:
        pod_spec["subdomain"] = name  # Pods resolve as <job>-<index>.<service>
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        # One node failing ends its peers' Pods within seconds (their collectives fail). A limit shared by all Pods
        # would count that one fault once per node and fail the Job; a limit per index counts it once: the group
        # restarts together (each index once) and resumes from the newest checkpoint. Any index out of retries
        # fails the Job (maxFailedIndexes 0).
        del job_spec["backoffLimit"]
        job_spec.update(backoffLimitPerIndex=training.backoff_limit, maxFailedIndexes=0)
    meta = metadata(name, ftj, labels, {ANNOTATION_START_MODEL: rev.start_model or ""})
    queue = stage_queue(ftj, model)
    if queue is not None:
        # Created suspended in Kueue's queue: Kueue admits it (all its Pods at once: a multi-node Job is admitted
        # whole or not at all) by unsuspending it, and may add node selectors of the flavor it chose. The operator
        # never unsuspends a Job, and never updates one it created.
        meta["labels"][LABEL_KUEUE_QUEUE] = queue
        job_spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def build_rendezvous_service(ftj: FineTuneJob | Mapping[str, Any], revision: Revision) -> dict[str, Any]:
    """The headless Service that gives a multi-node training Job's Pods stable DNS names for the c10d rendezvous."""
    ftj = as_model(FineTuneJob, ftj)
    name = stage_job_name(ftj, STAGE_TRAIN, revision)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, ftj, stage_labels(ftj, STAGE_TRAIN, revision)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": stage_selector(ftj, STAGE_TRAIN, revision),
            "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }


def build_stage_children(
    ftj: FineTuneJob | Mapping[str, Any],
    model: GPTModel | Mapping[str, Any],
    stage: str,
    *,
    revision: Revision | None = None,
    retain: tuple[str, ...] = (),
    image: str | None = None,
) -> list[dict[str, Any]]:
    """Everything a stage needs: its Job, preceded by the rendezvous Service for multi-node training."""
    ftj = as_model(FineTuneJob, ftj)
    rev = revision or new_revision(ftj, as_model(GPTModel, model))
    job = build_stage_job(ftj, model, stage, revision=rev, retain=retain, image=image)
    if is_multinode(ftj, stage):
        return [build_rendezvous_service(ftj, rev), job]
    return [job]
