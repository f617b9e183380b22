"""The chart's Argo CD health checks run as Argo CD runs them (Lua 5.1, as its gopher-lua), for the planner tests and
the cluster tests alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (the dev extra) runs the Lua health checks")

CHART = Path(__file__).resolve().parents[1] / "charts" / "gptops" / "files"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would compute them for `obj` (kind: "finetunejob" or "gptmodel")."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    script = (CHART / f"argocd-health-{kind}.lua").read_text()
    hs = lua.execute(f"return function(obj)\n{script}\nend")(_to_lua(lua, obj))
    return hs["status"], hs["message"] or ""


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value
