"""Types shared by both kinds: base classes, secret references, tolerations, quantities. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gptops.api.constants import API_VERSION

#: Bounds that the CRDs also enforce, so CEL cost stays within the API server's budget.
NAME_MAX = 253
STRING_MAX = 1024
PATH_MAX = 4096
URI_MAX = 2048
LIST_MAX = 64
MAP_MAX = 64

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
ShortString = Annotated[str, Field(max_length=STRING_MAX)]
Path = Annotated[str, Field(min_length=1, max_length=PATH_MAX)]
#: A Kueue LocalQueue's name as its kueue.x-k8s.io/queue-name label value carries it: a DNS label.
QueueName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
                    r"|(\.[0-9]+))))?$")
#: A Kubernetes quantity ("4", "500m", "16Gi"), written as a string or an integer.
Quantity = Annotated[int | Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)],
                     Field(union_mode="left_to_right")]


class SpecModel(BaseModel):
    """Base of every spec type: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """camelCase dict, without unset optionals (what a user would write, plus defaults)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(BaseModel):
    """Base of every status type: camelCase aliases, unknown fields ignored (status is written by many versions)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Scheduling(SpecModel):
    """Where stage Jobs wait for quota: a Kueue LocalQueue in the same namespace (None: no queue)."""

    queue_name: QueueName | None = None


class SecretRef(SpecModel):
    """A Secret in the same namespace."""

    name: Name


class TokenSecretRef(SpecModel):
    """A key of a Secret holding a Hugging Face token."""

    name: Name
    key: Name = "token"


class ApiKeySecretRef(SpecModel):
    """A key of a Secret holding the API key vLLM requires from clients."""

    name: Name
    key: Name = "api-key"


class Toleration(SpecModel):
    """A core/v1 Toleration."""

    key: ShortString | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: ShortString | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str = ""
    namespace: str = "default"
    uid: str = ""
    generation: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ObjectModel(BaseModel):
    """Base of the two kinds' whole objects (apiVersion, kind, metadata; each kind adds spec and status), as read
    from the API or a file: camelCase aliases, unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["gptops.io/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Self:
        """Parse the object from a dict (kopf body, API object or YAML document)."""
        return cls.model_validate(dict(obj))

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace
