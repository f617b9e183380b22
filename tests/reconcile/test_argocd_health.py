"""The chart's Argo CD health checks (Lua 5.1, as Argo CD's gopher-lua runs them) on the statuses the real planners
write, in every state a GPTModel and a FineTuneJob can be in."""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import replace
from typing import Any

import pytest
from argocd_health import health
from gptops.reconcile import PodState
from reconcile_world import World, passed_finetunejob, settle, stage_result

GOOD = {"perplexity": 20.0, "baselinePerplexity": 40.0}
BAD = {"perplexity": 80.0, "baselinePerplexity": 90.0}


def finish(world: World, stage: str, message: str, ok: bool = True) -> None:
    settle(world, "ftj")
    world.finish_job(world.job(stage), message, ok=ok)
    settle(world, "ftj")


def ftj_in(world: World, state: str) -> dict[str, Any]:
    """Drive the FineTuneJob into `state` with the real planner."""
    if state == "new":
        return world.ftj
    if state == "queued":
        world.ftj["spec"]["scheduling"] = {"queueName": "gpus"}
    settle(world, "ftj")
    if state == "queued":
        return world.ftj
    if state == "preparing":
        return world.ftj
    if state == "unschedulable":
        job = world.job("prepare")
        pending = PodState(name="p", phase="Pending", unschedulable="0/2 nodes are available")
        world.jobs[job] = replace(world.jobs[job], pods=(pending,))
        settle(world, "ftj")
        return world.ftj
    if state == "failed":
        finish(world, "prepare", stage_result("prepare", ok=False, message="no column 'text'"), ok=False)
        return world.ftj
    if state in ("awaiting approval", "rejected by a person"):
        world.ftj["spec"]["evaluation"]["approval"] = "manual"
    finish(world, "prepare", stage_result("prepare"))
    finish(world, "train", stage_result("train", digest="sha256:w"))
    finish(world, "evaluate", stage_result("evaluate", metrics=BAD if state == "rejected" else GOOD))
    if state == "rejected by a person":
        world.ftj["metadata"]["annotations"] = {"gptops.io/approved": "false"}
        settle(world, "ftj")
    if state == "promoted":
        world.apply_model(world.plan_model())
        settle(world, "ftj")
    return world.ftj


@pytest.mark.parametrize(("state", "status", "says"), [
    ("new", "Progressing", "Waiting for the operator"),
    ("preparing", "Progressing", "Prepared: Job tiny-ft-prepare-"),
    ("queued", "Progressing", "is queued in Kueue LocalQueue gpus: it starts when Kueue admits it"),
    ("unschedulable", "Progressing", "cannot be scheduled: 0/2 nodes are available"),
    ("failed", "Degraded", "no column 'text'"),
    ("rejected", "Degraded", "Rejected by its gate: maxPerplexity: perplexity 80.00, needs <= 50.00"),
    ("passed", "Healthy", "waiting for GPTModel tiny to serve it"),
    ("awaiting approval", "Suspended", "awaits a person's approval (no decision yet). Approve: kubectl annotate ftj"),
    ("rejected by a person", "Degraded", "Rejected by a person: revision "),
    ("promoted", "Healthy", "served by GPTModel tiny"),
])
def test_finetunejob_health(world: World, state: str, status: str, says: str) -> None:
    got = health("finetunejob", ftj_in(world, state))
    assert got[0] == status and says in got[1], got


def test_a_finetunejob_without_its_gptmodel_is_degraded(world: World) -> None:
    world.model = None
    settle(world, "ftj")
    assert health("finetunejob", world.ftj) == ("Degraded", "GPTModel tiny not found in namespace ml")


def test_an_edited_finetunejob_is_progressing_until_the_operator_saw_it(world: World) -> None:
    ftj_in(world, "rejected")
    world.ftj["metadata"]["generation"] += 1
    assert health("finetunejob", world.ftj)[0] == "Progressing"


def model_in(world: World, state: str) -> dict[str, Any]:
    if state == "nothing to serve":
        world.model["spec"]["source"] = {"scratch": {}}
        settle(world, "model")
        return world.model
    settle(world, "model")
    if state == "rolling out":
        return world.model
    world.roll_out()
    settle(world, "model")
    if state == "ready":
        return world.model
    world.finetunejobs["ft-1"] = passed_finetunejob("ft-1", promote=True)
    settle(world, "model")
    if state == "rolling out a revision":
        return world.model
    world.stall()
    world.now = "2026-01-01T00:10:00Z"
    world.apply_model(world.plan_model())
    return world.model  # rolled back


@pytest.mark.parametrize(("state", "status", "says"), [
    ("nothing to serve", "Healthy", "nothing to serve yet"),
    ("rolling out", "Progressing", "rolling out revision source"),
    ("ready", "Healthy", "1/1 replicas available"),
    ("rolling out a revision", "Progressing", "rolling out revision ft-1"),
    ("rolled back", "Degraded", "revision ft-1 did not become Available"),
])
def test_gptmodel_health(world: World, state: str, status: str, says: str) -> None:
    got = health("gptmodel", model_in(world, state))
    assert got[0] == status and says in got[1], got


def test_a_pin_that_cannot_be_served_is_degraded_and_the_new_generation_waits(world: World) -> None:
    model_in(world, "ready")
    world.model["spec"]["serving"]["revision"] = "nope"
    world.model["metadata"]["generation"] = 2
    assert health("gptmodel", world.model)[0] == "Progressing"  # not observed yet
    settle(world, "model")
    assert health("gptmodel", copy.deepcopy(world.model)) == (
        "Degraded", "spec.serving.revision nope: there is no FineTuneJob nope in ml")


@pytest.mark.parametrize(("action", "status", "says"), [
    ("alert", "Healthy", "1/1 replicas available"),  # Drifted=True alerts; the server still answers
    ("rollback", "Degraded", "revision ft-1 drifted in live evaluation (perplexity 60"),
])
def test_a_drifted_gptmodel(world: World, action: str, status: str, says: str) -> None:
    from test_plan_monitoring import finish_monitor, monitor_jobs, monitored, rolled_out

    monitored(world, action=action)
    rolled_out(world)
    [job] = monitor_jobs(world)
    finish_monitor(world, job, perplexity=60.0, bleu=20.0)
    world.apply_model(world.plan_model())
    assert any(c["type"] == "Drifted" and c["status"] == "True" for c in world.model["status"]["conditions"])
    got = health("gptmodel", world.model)
    assert got[0] == status and says in got[1], got


@pytest.mark.parametrize("line", ['local _ = string.find("a", "a")', 'local _ = ("a"):upper()',
                                  "local _ = math.floor(1.5)", 'local _ = io.open("/etc/hostname")',
                                  'os.execute("true")'])
def test_the_sandbox_refuses_what_argo_cd_refuses(tmp_path, monkeypatch, line: str) -> None:
    """Argo CD opens only package, base, table and a safe os (time, date) for a health check: a script that reaches
    for anything else fails in the runner too."""
    import argocd_health

    (tmp_path / "argocd-health-gptmodel.lua").write_text(f"{line}\nreturn {{status = 'Healthy', message = ''}}\n")
    monkeypatch.setattr(argocd_health, "CHART", tmp_path)
    with pytest.raises(Exception, match="attempt to|nil"):
        argocd_health.lua_health("gptmodel", {"metadata": {"generation": 1}})


def test_argo_cds_own_engine_runs_the_charts_lua_where_it_is_built(tmp_path) -> None:
    """Where tools/argocd-health is built, every health() above was also answered by Argo CD's own engine; here it
    must also refuse what the sandbox refuses."""
    import argocd_health

    engine = argocd_health.argocd_engine()
    if engine is None:
        pytest.skip("Argo CD's engine is not built (tools/build-argocd-health.sh, or GPTOPS_ARGOCD_HEALTH=build): "
                    "the health checks ran in the Lua runner only")
    ready = {"metadata": {"generation": 1},
             "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "message": "1/1"}]}}
    assert argocd_health.argocd_health(engine, "gptmodel", [ready]) == [("Healthy", "1/1")]
    bad = tmp_path / "bad.lua"
    bad.write_text('local _ = string.find("a", "a")\nreturn {status = "Healthy", message = ""}\n')
    done = subprocess.run([str(engine), str(bad)], input="[{}]", capture_output=True, text=True, timeout=60,
                          check=True)
    assert "attempt to index a non-table object(nil) with key 'find'" in json.loads(done.stdout)[0]["error"]
