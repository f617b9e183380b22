"""What a planner returns: the actions to take and the status to write. Pure data; no I/O, no kopf or kubernetes.

cluster.py carries actions out; handlers write `Plan.status` through kopf's `patch.status`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class _ChildAction:
    """An action on one child object, given as its whole manifest."""

    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class CreateChild(_ChildAction):
    """Create a child object; meeting 409 AlreadyExists is success (names are deterministic)."""


@dataclass(frozen=True)
class ApplyChild(_ChildAction):
    """Server-side apply a child (create it, or bring it to exactly this manifest; fields left out are removed)."""


@dataclass(frozen=True)
class DeleteChild:
    """Delete a child (its Pods go with it, in the background); meeting 404 NotFound is success."""

    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes Event on the object being reconciled. `child` ("Kind/name") marks an event that announces the
    creation of that child: it is not posted when the create meets a child that already exists (a pass whose watch
    cache had not shown it yet), so that each child is announced once."""

    type: EventType
    reason: str
    message: str
    child: str | None = None


Action = CreateChild | ApplyChild | DeleteChild | EmitEvent


@dataclass(frozen=True)
class Plan:
    """The decision of one reconcile pass: `actions` in order, then `status` (a merge patch of .status)."""

    actions: tuple[Action, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> tuple[Action, ...]:
        """The actions that change the cluster (everything but events)."""
        return tuple(a for a in self.actions if not isinstance(a, EmitEvent))

    @property
    def events(self) -> tuple[EmitEvent, ...]:
        return tuple(a for a in self.actions if isinstance(a, EmitEvent))


def apply_merge_patch(old: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any] | None:
    """`old` with a JSON merge patch applied, as the API server applies it (None: the patch removes it all)."""
    if patch is None:
        return None
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def merge_patch_from(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that turns `old` into exactly `new`: keys that are gone become None, maps recurse,
    everything else (lists included) is replaced whole."""
    patch: dict[str, Any] = dict.fromkeys(k for k in old if k not in new)
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = merge_patch_from(before, value)
        else:
            patch[key] = value
    return patch
