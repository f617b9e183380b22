"""The stage-result contract, `gptops.io/stage-result/v1`: the small JSON document each stage writes to its
container's termination message (and prints last on stdout). Pure; the pipeline writes it, the operator reads it."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

STAGE_RESULT_API_VERSION = "gptops.io/stage-result/v1"
#: Kubernetes keeps at most 4096 bytes of a termination message.
MAX_BYTES = 4096

StageName = Literal["prepare", "train", "evaluate", "monitor"]


#: Sample generations a result carries (the evaluate stage's report keeps more), and the characters kept of each text.
SAMPLES_MAX = 3
SAMPLE_TEXT_MAX = 160


def _cut_text(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= SAMPLE_TEXT_MAX else text[: SAMPLE_TEXT_MAX - 1] + "\u2026"


class Sample(BaseModel):
    """One held-out prompt, its reference, and what the new and the base model wrote (for a person to read)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    prompt: str = ""
    reference: str = ""
    output: str = ""
    base_output: str | None = Field(default=None, alias="baseOutput")

    @field_validator("prompt", "reference", "output", "base_output", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        return None if value is None else _cut_text(value)


class StageResult(BaseModel):
    """What one stage reports: ok or not, a human message, metrics, artifact paths and a content digest."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: Literal["gptops.io/stage-result/v1"] = Field(default=STAGE_RESULT_API_VERSION, alias="apiVersion")
    stage: StageName
    ok: bool
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)
    digest: str | None = None
    samples: list[Sample] = Field(default_factory=list)
    """A few sample generations (the evaluate stage), each text cut to SAMPLE_TEXT_MAX characters."""

    @field_validator("samples", mode="before")
    @classmethod
    def _few_samples(cls, value: Any) -> Any:
        return value[:SAMPLES_MAX] if isinstance(value, list) else value

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_numbers_only(cls, value: Any) -> Any:
        """A stage may report a null or a label among its metrics; keep the finite numbers (status is JSON)."""
        if not isinstance(value, dict):
            return value
        return {str(k): float(v) for k, v in value.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}

    @field_validator("artifacts", mode="before")
    @classmethod
    def _paths_only(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(k): str(v) for k, v in value.items() if v is not None and not isinstance(v, (dict, list))}

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        if not data.get("samples"):
            data.pop("samples", None)
        return data

    def to_termination_message(self) -> str:
        """Compact JSON under MAX_BYTES; samples go first (one at a time), then the message is cut, then artifacts,
        if it would not fit."""
        data = self.to_dict()
        text = _dumps(data)
        while len(text.encode()) > MAX_BYTES and data.get("samples"):
            data["samples"] = data["samples"][:-1] or None
            if data["samples"] is None:
                del data["samples"]
            text = _dumps(data)
        if len(text.encode()) <= MAX_BYTES:
            return text
        overflow = len(text.encode()) - MAX_BYTES
        msg = data.get("message", "").encode()
        data["message"] = msg[: max(0, len(msg) - overflow - 16)].decode(errors="ignore") + " [truncated]"
        text = _dumps(data)
        if len(text.encode()) > MAX_BYTES:
            data["artifacts"] = {}
            data["message"] = data["message"][:512]
            text = _dumps(data)
        if len(text.encode()) > MAX_BYTES:
            data["metrics"] = {}
            text = _dumps(data)
        return text


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _candidates(text: str) -> list[str]:
    """JSON-looking fragments, the most likely first: the whole text, then each line from the end,
    then every '{' from the end up to the last '}' (a log tail may glue the document to other output)."""
    out = [text.strip()]
    out += [line.strip() for line in reversed(text.splitlines()) if line.strip().startswith("{")]
    end = text.rfind("}")
    start = text.rfind("{", 0, end + 1)
    while start != -1 and end != -1:
        out.append(text[start : end + 1])
        start = text.rfind("{", 0, start)
    return out


def parse_stage_result(text: str | bytes | None, *, stage: str | None = None) -> StageResult | None:
    """The last valid stage result in a termination message (or log tail), or None if there is none.

    Tolerates garbage around the document, a truncated document, and other JSON; never raises.
    With `stage`, a result for a different stage is ignored.
    """
    if not text:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text[-4 * MAX_BYTES :]
    for fragment in _candidates(text)[:200]:
        if STAGE_RESULT_API_VERSION not in fragment:
            continue
        try:
            data = json.loads(fragment)
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("apiVersion") != STAGE_RESULT_API_VERSION:
            continue
        try:
            result = StageResult.model_validate(data)
        except ValidationError:
            continue
        if stage is None or result.stage == stage:
            return result
    return None
