"""Table tests of the live evaluation in plan_gptmodel (reconcile/monitoring.py): the monitor Job on its schedule,
its result in status.monitoring and the Drifted condition against the numbers the revision was promoted with, and
the rollback of a drifted revision with action rollback."""

from __future__ import annotations

import pytest
from reconcile_world import World, conditions, passed_finetunejob, settle, stage_result

from gptops.reconcile import CreateChild, DeleteChild
from gptops.reconcile.monitoring import judge

MODEL_DIR = "/artifacts/ml/ft-1/0123456789/model"
PROMOTED = {"servingRevision": "ft-1", "servingArtifact": MODEL_DIR, "servingPassedAt": "2026-01-01T00:00:00Z",
            "previousArtifact": "sshleifer/tiny-gpt2"}
AT_PROMOTION = {"perplexity": 40.0, "bleu": 20.0, "baselinePerplexity": 120.0}
HELD_OUT = {"source": {"configMap": {"name": "held-out", "key": "data.jsonl"}}}


def monitored(world: World, **monitoring) -> World:
    world.model["spec"]["monitoring"] = {"dataset": HELD_OUT, "intervalSeconds": 600, **monitoring}
    ftj = passed_finetunejob("ft-1", artifacts={"model": MODEL_DIR})
    ftj["status"]["metrics"] = AT_PROMOTION
    world.finetunejobs["ft-1"] = ftj
    world.serving_pods = ("http://10.1.0.7:8000/metrics",)
    settle(world, "model")
    world.roll_out()
    world.model["status"].update(PROMOTED)
    return world


def rolled_out(world: World) -> None:
    """Roll out ft-1 and let the passes settle."""
    world.apply_model(world.plan_model())
    world.roll_out()
    settle(world, "model")


def monitor_jobs(world: World) -> list[str]:
    return sorted(n for n, j in world.jobs.items() if j.stage == "monitor")


def finish_monitor(world: World, name: str, **metrics: float) -> None:
    world.finish_job(name, stage_result("monitor", message="live: measured", metrics=metrics))


def test_judge_flags_only_a_worsening_beyond_the_tolerance() -> None:
    base = {"perplexity": 40.0, "bleu": 20.0}
    assert not judge({"perplexity": 43.0, "bleu": 19.0}, base, tolerance=0.1).drifted
    worse = judge({"perplexity": 48.0, "bleu": 21.0}, base, tolerance=0.1)
    assert worse.drifted and worse.change == {"perplexity": 0.2, "bleu": 0.05}
    assert "perplexity 48 is 20.0% worse than 40" in worse.reasons[0]
    assert judge({"bleu": 17.0}, base, tolerance=0.1).drifted  # BLEU: lower is worse
    assert not judge({"perplexity": 30.0}, base, tolerance=0.0).drifted  # better is never a drift
    assert not judge({"bleu": 5.0}, {}, tolerance=0.1).drifted  # no promotion value: reported, not judged
    psi = judge({}, base, tolerance=0.1, psi=0.4, psi_threshold=0.2)
    assert psi.drifted and "input PSI 0.4" in psi.reasons[0]


def test_a_rolled_out_revision_gets_its_first_monitor_job_once(world: World) -> None:
    monitored(world)
    plan = world.plan_model()
    world.apply_model(plan)
    world.roll_out()
    plan = world.plan_model()
    [create] = [a for a in plan.changes if isinstance(a, CreateChild) and a.kind == "Job"]
    job = create.manifest
    assert job["metadata"]["name"] == "tiny-monitor-0123456789-0"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "GPTModel"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["-m", "gptops.pipeline", "monitor"]
    assert args[args.index("--endpoint") + 1] == "http://tiny.ml.svc:8000/v1"
    assert args[args.index("--metrics-url") + 1] == "http://10.1.0.7:8000/metrics"
    assert "gptops.io/model" not in job["spec"]["template"]["metadata"]["labels"]  # not selected by the Service
    drifted = conditions(plan.status)["Drifted"]
    assert drifted["status"] == "Unknown" and drifted["reason"] == "NotYetRun"
    world.apply_model(plan)
    assert not [a for a in world.plan_model().changes if isinstance(a, CreateChild)]  # it exists: not again


def test_a_run_within_tolerance_is_recorded_and_the_next_one_waits_for_its_interval(world: World) -> None:
    monitored(world)
    rolled_out(world)
    [job] = monitor_jobs(world)
    finish_monitor(world, job, perplexity=41.0, bleu=19.5, inputPsi=0.05, liveRequests=200)
    plan = world.plan_model()
    monitoring = plan.status["monitoring"]
    assert monitoring["live"] == {"perplexity": 41.0, "bleu": 19.5}
    assert monitoring["atPromotion"] == {"perplexity": 40.0, "bleu": 20.0}
    assert monitoring["change"] == {"perplexity": 0.025, "bleu": -0.025} and monitoring["inputPsi"] == 0.05
    assert monitoring["lastRun"]["job"] == job and monitoring["lastRun"]["result"] == "ok"
    drifted = conditions(plan.status)["Drifted"]
    assert drifted["status"] == "False" and drifted["reason"] == "WithinTolerance"
    assert "perplexity 41 vs 40 at promotion" in drifted["message"]
    assert not [a for a in plan.changes if isinstance(a, CreateChild)]  # the same interval: no second run
    world.apply_model(plan)
    world.now = "2026-01-01T00:10:00Z"  # the next interval
    settle(world, "model")
    assert monitor_jobs(world) == [job, "tiny-monitor-0123456789-1"]


@pytest.mark.parametrize(("action", "rolled_back"), [("alert", False), ("rollback", True)])
def test_a_drift_is_flagged_and_with_action_rollback_the_previous_revision_is_served(world: World, action,
                                                                                     rolled_back) -> None:
    monitored(world, action=action)
    rolled_out(world)
    [job] = monitor_jobs(world)
    finish_monitor(world, job, perplexity=60.0, bleu=20.0)
    plan = world.plan_model()
    drifted = conditions(plan.status)["Drifted"]
    assert drifted["status"] == "True" and drifted["reason"] == "MetricsWorsened"
    assert "perplexity 60 is 50.0% worse than 40 at promotion" in drifted["message"]
    assert ("Warning", "MetricsWorsened") in [(e.type, e.reason) for e in plan.events]
    assert plan.status["monitoring"]["lastRun"]["result"] == "drifted"
    if not rolled_back:
        assert "servingArtifact" not in plan.status and not conditions(plan.status)["Degraded"]["status"] == "True"
        return
    assert plan.status["servingArtifact"] == "sshleifer/tiny-gpt2" and plan.status["servingRevision"] is None
    degraded = conditions(plan.status)["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "RolledBack"
    assert degraded["message"].startswith("revision ft-1 drifted in live evaluation (perplexity 60")
    assert ("Warning", "RolledBack") in [(e.type, e.reason) for e in plan.events]
    world.apply_model(plan)
    assert world.deployment.annotations["gptops.io/revision"] == "source"
    world.roll_out()
    settle(world, "model")
    # The drifted revision is not served again; its monitor Jobs go; the source is monitored now.
    assert world.model["status"].get("servingRevision") is None
    assert job not in world.jobs and monitor_jobs(world) == [f"tiny-monitor-source-{_interval(world)}"]
    assert conditions(world.model["status"])["Degraded"]["reason"] == "RolledBack"


def _interval(world: World) -> int:
    import datetime as dt

    now = dt.datetime.fromisoformat(world.now.replace("Z", "+00:00"))
    return int(now.timestamp() // 600)


def test_a_failed_run_says_why_and_judges_nothing(world: World) -> None:
    monitored(world, action="rollback")
    rolled_out(world)
    [job] = monitor_jobs(world)
    world.finish_job(job, stage_result("monitor", ok=False, message="http://tiny.ml.svc:8000/v1: ConnectError"),
                     ok=False)
    plan = world.plan_model()
    drifted = conditions(plan.status)["Drifted"]
    assert drifted["status"] == "Unknown" and drifted["reason"] == "MonitorFailed"
    assert "ConnectError" in drifted["message"] and plan.status["monitoring"]["lastRun"]["result"] == "error"
    assert "servingArtifact" not in plan.status


def test_turning_monitoring_off_removes_its_jobs_status_and_condition(world: World) -> None:
    monitored(world)
    rolled_out(world)
    [job] = monitor_jobs(world)
    finish_monitor(world, job, perplexity=41.0)
    settle(world, "model")
    del world.model["spec"]["monitoring"]
    plan = world.plan_model()
    assert DeleteChild("Job", job, "ml") in plan.changes
    assert plan.status["monitoring"] is None and "Drifted" not in conditions(plan.status)


def test_a_dataset_on_this_machine_is_refused_in_a_cluster_naming_the_field(world: World) -> None:
    monitored(world, dataset={"source": {"local": {"path": "held-out.jsonl"}}})
    rolled_out(world)
    assert monitor_jobs(world) == []
    drifted = conditions(world.model["status"])["Drifted"]
    assert drifted["status"] == "Unknown" and drifted["reason"] == "InvalidSpec"
    assert "spec.monitoring.dataset.source.local is for gptops run only" in drifted["message"]
