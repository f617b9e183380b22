"""Where data and weights come from: the source types shared by GPTModel (model source, monitoring dataset) and
FineTuneJob (training dataset). Mirrors both CRDs (tested against them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from gptops.api.common import URI_MAX, Name, Path, SecretRef, SpecModel, TokenSecretRef


class S3Source(SpecModel):
    """An S3 (or S3-compatible) prefix."""

    uri: str = Field(min_length=6, max_length=URI_MAX, pattern=r"^s3://")
    credentials_secret_ref: SecretRef | None = None
    endpoint_url: str | None = Field(default=None, max_length=URI_MAX)


class LocalSource(SpecModel):
    """gptops run only: a path on this machine, relative to the spec file."""

    path: Path = Field(pattern=r"^[^\x00]*$")  # no NUL byte: no filesystem path has one


# --- dataset -------------------------------------------------------------------------------------------------


class HuggingFaceDatasetSource(SpecModel):
    """A dataset on the Hugging Face Hub."""

    name: Name
    config: Name | None = None
    split: Name = "train"
    revision: Name | None = None
    token_secret_ref: TokenSecretRef | None = None


class URLDatasetSource(SpecModel):
    """A file served over HTTP(S)."""

    url: str = Field(min_length=8, max_length=URI_MAX, pattern=r"^https?://")


class PVCDatasetSource(SpecModel):
    """A file or directory on a PersistentVolumeClaim."""

    claim_name: Name
    path: Path


class ConfigMapDatasetSource(SpecModel):
    """A key of a ConfigMap in the same namespace (small, inline datasets)."""

    name: Name
    key: Name


class DatasetSource(SpecModel):
    """Exactly one of the dataset sources."""

    huggingface: HuggingFaceDatasetSource | None = None
    url: URLDatasetSource | None = None
    s3: S3Source | None = None
    pvc: PVCDatasetSource | None = None
    config_map: ConfigMapDatasetSource | None = None
    local: LocalSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSource:
        values = (self.huggingface, self.url, self.s3, self.pvc, self.config_map, self.local)
        if sum(v is not None for v in values) != 1:
            raise ValueError("exactly one of huggingface, url, s3, pvc, configMap or local must be set")
        return self

    @property
    def kind(self) -> str:
        """Which source is set (camelCase, as in the spec)."""
        for attr, key in (("huggingface", "huggingface"), ("url", "url"), ("s3", "s3"), ("pvc", "pvc"),
                          ("config_map", "configMap"), ("local", "local")):
            if getattr(self, attr) is not None:
                return key
        raise AssertionError("validated: one source is set")


class DatasetFields(SpecModel):
    """Names of the fields read from each record."""

    text: Name = "text"
    messages: Name = "messages"
    prompt: Name = "prompt"
    completion: Name = "completion"


