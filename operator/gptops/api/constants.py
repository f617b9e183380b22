"""Names shared by the operator, the builders and the pipeline: API group, kinds, labels, annotations, stages.

Imports only gptops.api.names; everything else may import this.
"""

from __future__ import annotations

from gptops.api.names import label_value

GROUP = "gptops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

KIND_GPTMODEL = "GPTModel"
KIND_FINETUNEJOB = "FineTuneJob"
PLURAL_GPTMODEL = "gptmodels"
PLURAL_FINETUNEJOB = "finetunejobs"
SINGULAR_GPTMODEL = "gptmodel"
SINGULAR_FINETUNEJOB = "finetunejob"
SHORTNAME_GPTMODEL = "gm"
SHORTNAME_FINETUNEJOB = "ftj"
CATEGORY = "gptops"

#: kopf keeps its finalizer, progress and diff-base annotations under this prefix (DESIGN §4).
KOPF_STORAGE_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"

# The fixed label set of every child. Never copy the parent's labels (Argo CD's tracking label would prune children).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_FINETUNEJOB = f"{GROUP}/finetunejob"
LABEL_MODEL = f"{GROUP}/model"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_REVISION = f"{GROUP}/revision"
#: On stage Jobs: the revision (api/revisions.py) they write, and the hash of the spec fields that decided it.
LABEL_REVISION_KEY = f"{GROUP}/revision-key"
LABEL_SPEC_KEY = f"{GROUP}/spec-key"
#: Kueue's label on a Job: the LocalQueue it waits in (spec.scheduling.queueName). Kueue admits the Job by unsuspending it.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "gptops"
APP_NAME = "gptops"

ANNOTATION_REVISION = f"{GROUP}/revision"
ANNOTATION_ARTIFACT = f"{GROUP}/artifact"
ANNOTATION_ADAPTER = f"{GROUP}/adapter"
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
#: The sha256 of the served weights, as the train stage recorded it.
ANNOTATION_DIGEST = f"{GROUP}/digest"
#: On stage Jobs: the model directory the revision starts from ("" for the GPTModel's source).
ANNOTATION_START_MODEL = f"{GROUP}/start-model"
#: Set by a person on a FineTuneJob with `evaluation.approval: manual`: "true" approves its passed revision for
#: promotion, "false" rejects it. ANNOTATION_APPROVED_REVISION, when set, binds the decision to that revision key.
ANNOTATION_APPROVED = f"{GROUP}/approved"
ANNOTATION_APPROVED_REVISION = f"{GROUP}/approved-revision"

# Pipeline stages, in order.
STAGE_PREPARE = "prepare"
STAGE_TRAIN = "train"
STAGE_EVALUATE = "evaluate"
STAGES = (STAGE_PREPARE, STAGE_TRAIN, STAGE_EVALUATE)
#: The live evaluation of a GPTModel's served revision (a Job of the GPTModel, not of a FineTuneJob).
STAGE_MONITOR = "monitor"

# Where things live inside the Pods the builders make.
ARTIFACTS_MOUNT = "/artifacts"
#: A PVC named in a spec (model or dataset source) is mounted at /mnt/pvc/<claimName> (pipeline/config.py agrees).
PVC_MOUNT_ROOT = "/mnt/pvc"
#: A ConfigMap dataset source is mounted at /etc/gptops/configmaps/<name>.
CONFIGMAP_MOUNT_ROOT = "/etc/gptops/configmaps"
#: Writable caches (HOME, HF_HOME, XDG_CACHE_HOME) in every Pod: an emptyDir.
CACHE_MOUNT = "/cache"
TERMINATION_LOG = "/dev/termination-log"
VLLM_PORT = 8000
#: The largest LoRA rank vLLM serves (its --max-lora-rank); FineTuneJob's lora.r is bounded by it.
LORA_RANK_MAX = 512
RDZV_PORT = 29500

# Exit codes of a stage process (`python -m gptops.pipeline`, and its torchrun launcher). A stage that rejected its
# input fails the same way every time: its Job fails at once. A crash (a lost peer, a device error) and a result that
# could not be written are retried up to backoffLimit, as a lost Pod is; training resumes from its checkpoint.
EXIT_STAGE_FAILED = 1
EXIT_RESULT_UNWRITTEN = 2
EXIT_CRASHED = 3
GPU_RESOURCE = "nvidia.com/gpu"

DEFAULT_TRAINER_IMAGE = "ghcr.io/gptops/trainer:0.1.0"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"


def fixed_labels(
    *,
    component: str,
    model: str | None = None,
    finetunejob: str | None = None,
    stage: str | None = None,
    revision: str | None = None,
    revision_key: str | None = None,
    spec_key: str | None = None,
) -> dict[str, str]:
    """The explicit label set of a child; values are made label-safe (<= 63 chars)."""
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: APP_NAME, LABEL_COMPONENT: component}
    for key, value in (
        (LABEL_MODEL, model),
        (LABEL_FINETUNEJOB, finetunejob),
        (LABEL_STAGE, stage),
        (LABEL_REVISION, revision),
        (LABEL_REVISION_KEY, revision_key),
        (LABEL_SPEC_KEY, spec_key),
    ):
        if value:
            labels[key] = label_value(value)
    return labels

# KEDA's ScaledObject (keda.sh/v1alpha1), made instead of the HorizontalPodAutoscaler where KEDA's CRDs are installed.
KEDA_GROUP = "keda.sh"
KEDA_VERSION = "v1alpha1"
KEDA_PLURAL = "scaledobjects"
KEDA_KIND = "ScaledObject"
