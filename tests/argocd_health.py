"""The chart's Argo CD health checks run as Argo CD runs them, for the planner tests and the cluster tests alike.

Every call runs the Lua in Lua 5.1 (lupa) in the sandbox Argo CD gives a custom health check (its util/lua package,
without useOpenLibs): only the package, base and table libraries and a safe `os` with `time` and `date` are open, so
a script that reaches for `string`, `math`, `io` or a string method fails here as it would in Argo CD. Where Argo CD's
own engine is built (tools/build-argocd-health.sh, cached: `tools/argocd-health/`, a Go harness around
github.com/argoproj/argo-cd/v3/util/lua), the same object also goes through it and both answers must agree."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (the dev extra) runs the Lua health checks")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gptops" / "files"
BUILD = ROOT / "tools" / "build-argocd-health.sh"

# What Argo CD's runLua leaves open (util/lua/lua.go: OpenPackage, OpenBase, OpenTable, its OpenSafeOs), and the rest
# of what a plain Lua state would have, closed.
SANDBOX = """
string, math, io, debug, coroutine, utf8 = nil, nil, nil, nil, nil, nil
local time, date = os.time, os.date
os = {time = time, date = date}
rawset(getmetatable(""), "__index", nil)
"""


def script(kind: str) -> Path:
    return CHART / f"argocd-health-{kind}.lua"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would compute them for `obj` (kind: "finetunejob" or "gptmodel")."""
    got = lua_health(kind, obj)
    engine = argocd_engine()
    if engine is not None:
        [theirs] = argocd_health(engine, kind, [obj])
        assert theirs == got, f"Argo CD's engine says {theirs}, the Lua runner {got}"
    return got


def lua_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """The Lua runner alone: Lua 5.1 in Argo CD's sandbox."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.execute(SANDBOX)
    hs = lua.execute(f"return function(obj)\n{script(kind).read_text()}\nend")(_to_lua(lua, obj))
    return hs["status"], hs["message"] or ""


@cache
def argocd_engine() -> Path | None:
    """The built harness of Argo CD's engine, or None where it is not built (GPTOPS_ARGOCD_HEALTH=build builds it)."""
    if os.environ.get("GPTOPS_ARGOCD_HEALTH") == "build":
        done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            pytest.fail(f"{BUILD.name} failed: {done.stderr[-2000:]}", pytrace=False)
    done = subprocess.run(["bash", str(BUILD), "--path"], capture_output=True, text=True, timeout=60, check=False)
    binary = Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
    return binary if binary is not None and binary.is_file() else None


def argocd_health(engine: Path, kind: str, objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(status, message) per object from Argo CD's own engine; an error in the script fails the test."""
    done = subprocess.run([str(engine), str(script(kind))], input=json.dumps(objects), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    errors = [r["error"] for r in results if r["error"]]
    assert not errors, errors
    return [(r["status"], r["message"]) for r in results]


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value
