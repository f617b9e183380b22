"""The gptops API: constants, the GPTModel and FineTuneJob models, conditions, the stage-result contract and
child names. Pure: imports pydantic only, never kopf or kubernetes."""

from gptops.api.artifacts import (
    ServedRevision,
    base_served_revision,
    previous_revision_from_status,
    recorded_revision,
    served_revision_for,
    served_revision_from_status,
    serving_status,
    source_model_location,
)
from gptops.api.conditions import (
    Condition,
    Reason,
    conditions_to_dicts,
    get_condition,
    is_true,
    now_rfc3339,
    set_condition,
)
from gptops.api.constants import API_VERSION, GROUP, KIND_FINETUNEJOB, KIND_GPTMODEL, VERSION, fixed_labels
from gptops.api.finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus
from gptops.api.gptmodel import GPTModel, GPTModelSpec, GPTModelStatus
from gptops.api.names import child_name, dns_label, label_value
from gptops.api.revisions import Revision, new_revision, revision_directory
from gptops.api.stageresult import STAGE_RESULT_API_VERSION, StageResult, parse_stage_result

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND_FINETUNEJOB",
    "KIND_GPTMODEL",
    "STAGE_RESULT_API_VERSION",
    "VERSION",
    "Condition",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "GPTModel",
    "GPTModelSpec",
    "GPTModelStatus",
    "Reason",
    "Revision",
    "ServedRevision",
    "StageResult",
    "base_served_revision",
    "child_name",
    "conditions_to_dicts",
    "dns_label",
    "fixed_labels",
    "get_condition",
    "is_true",
    "label_value",
    "new_revision",
    "now_rfc3339",
    "previous_revision_from_status",
    "parse_stage_result",
    "recorded_revision",
    "revision_directory",
    "served_revision_for",
    "served_revision_from_status",
    "serving_status",
    "set_condition",
    "source_model_location",
]
