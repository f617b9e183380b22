"""Faults on the real local control plane: kube-apiserver stopped for 30 s and etcd restarted while runs are in
flight, a fake node deleted under a training Pod, and the operator SIGKILLed every few seconds through the whole
lifecycle of 20 runs.

The operator runs as `gptops operator` subprocesses (as in test_operator_resilience.py); this test process plays
the trainer: every stage Pod that runs gets a stage result, through kwok (`Finisher`). After each fault every run
must complete with exactly one Job per stage (counted by label), each GPTModel must serve the revision that passed
its gate last (the rule of reconcile/promotion.py), and no Event may be posted twice."""

from __future__ import annotations

import collections
import json
import re
import time
from typing import Any

import pytest
from gptops.api.constants import (
    LABEL_FINETUNEJOB,
    LABEL_MANAGED_BY,
    LABEL_STAGE,
    MANAGED_BY,
)
from gptops.devcluster.cluster import build_fake_node
from gptops.devcluster.stages import RESULT_ANNOTATION
from operator_kit import GOOD, Cluster, example
from waiting import wait_for

pytestmark = pytest.mark.cluster

STAGES = ("prepare", "train", "evaluate")
STAGE_PODS = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_STAGE}"
STAGE_JOBS = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_FINETUNEJOB},{LABEL_STAGE}"
#: A label the node test puts on its own nodes, so that only its training Pod lands there.
FAULT_NODE_LABEL = "gptops.io/fault-test"


def fleet(k: Cluster, models: int, runs_per_model: int, training: dict[str, Any] | None = None) -> dict[str, str]:
    """Apply `models` GPTModels and `runs_per_model` FineTuneJobs of each (the examples, renamed); returns
    {run: model}."""
    docs, runs = [], {}
    for m in range(models):
        model = example("gptmodel.yaml")
        model["metadata"]["name"] = f"model-{m}"
        docs.append(model)
        for r in range(runs_per_model):
            run = example("finetunejob.yaml")
            run["metadata"]["name"] = f"run-{m}-{r}"
            run["spec"]["model"]["name"] = f"model-{m}"
            run["spec"]["training"].update(training or {})
            docs.append(run)
            runs[run["metadata"]["name"]] = f"model-{m}"
    k.apply(*docs)
    return runs


class Finisher:
    """Plays the trainer for kwok: every Running stage Pod of the namespace without a result gets one (the
    evaluate stage with metrics that pass the examples' gate), for the stages in `stages`."""

    def __init__(self, k: Cluster) -> None:
        self.k = k
        self.finished: set[str] = set()

    def step(self, stages: tuple[str, ...] = STAGES, once: set[str] | None = None) -> int:
        """Gives a result to every such Pod; with `once`, to at most one stage of each run: the runs finished are
        added to it and skipped while it is kept."""
        done = 0
        for pod in self.k.items("pods", STAGE_PODS):
            meta, stage = pod["metadata"], pod["metadata"]["labels"][LABEL_STAGE]
            run = meta["labels"].get(LABEL_FINETUNEJOB, "")
            if (stage not in stages or meta["uid"] in self.finished or meta.get("deletionTimestamp")
                    or (once is not None and run in once)
                    or RESULT_ANNOTATION in (meta.get("annotations") or {})
                    or pod["status"].get("phase") != "Running"):
                continue
            result = json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": True,
                                 "message": f"{stage} done", "metrics": GOOD if stage == "evaluate" else {},
                                 "artifacts": {}, "digest": "sha256:0123"})
            # A Pod may go between the list and the annotation (a node lost, a Job finished): not an error.
            if self.k.kubectl("annotate", "pod", meta["name"], f"{RESULT_ANNOTATION}={result}",
                              check=False).returncode == 0:
                self.finished.add(meta["uid"])
                if once is not None:
                    once.add(run)
                done += 1
        return done


def settled(k: Cluster, runs: dict[str, str]) -> bool:
    """Every run passed and its promotion is decided, and every GPTModel serves the run that passed last."""
    ftjs = {f["metadata"]["name"]: f for f in json.loads(k.kubectl("get", "ftj", "-o", "json").stdout)["items"]}
    if set(ftjs) != set(runs):
        return False
    for ftj in ftjs.values():
        conditions = {c["type"]: c for c in (ftj.get("status") or {}).get("conditions", [])}
        if conditions.get("Passed", {}).get("status") != "True":
            return False
        promoted = conditions.get("Promoted", {})
        if promoted.get("status") != "True" and promoted.get("reason") != "Superseded":
            return False
    models = {m["metadata"]["name"]: m for m in json.loads(k.kubectl("get", "gptmodel", "-o", "json").stdout)["items"]}
    return all((models.get(model) or {}).get("status", {}).get("servingRevision")
               == expected_revision(ftjs, runs, model) for model in set(runs.values()))


def passed_at(ftj: dict[str, Any]) -> tuple[str, str]:
    passed = next(c for c in ftj["status"]["conditions"] if c["type"] == "Passed")
    return passed["lastTransitionTime"], ftj["metadata"]["name"]


def expected_revision(ftjs: dict[str, dict[str, Any]], runs: dict[str, str], model: str) -> str:
    """The run of `model` whose gate passed last (ties by name), which the GPTModel must serve."""
    return max((ftjs[r] for r, m in runs.items() if m == model), key=passed_at)["metadata"]["name"]


def our_events(k: Cluster) -> list[tuple[str, str, str]]:
    """(object, reason, message) of every Event the operator posted in the namespace, repeated by its count."""
    items = json.loads(k.kubectl("get", "events", "-o", "json").stdout)["items"]
    return [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in items
            if e.get("source", {}).get("component") != "job-controller" and e["reason"] != "Logging"
            and e["involvedObject"]["kind"] in ("FineTuneJob", "GPTModel") for _ in range(e.get("count") or 1)]


def assert_complete_and_unique(k: Cluster, runs: dict[str, str], *, killed: bool = False) -> dict[str, Any]:
    """Every run complete with one Job per stage, every GPTModel serving the run that passed last (promoted once),
    no Event twice; returns the figures. With `killed` (the operator SIGKILLed along the way) an announcement may be
    missing but never doubled: Events go out after the pass that created the Job or changed what is served, so a
    kill between the two loses the Event (best effort, as Events are); the Job and the status are the record."""
    jobs = collections.Counter((j["metadata"]["labels"][LABEL_FINETUNEJOB], j["metadata"]["labels"][LABEL_STAGE])
                               for j in k.items("jobs", STAGE_JOBS))
    assert jobs == collections.Counter({(run, stage): 1 for run in runs for stage in STAGES}), jobs
    for job in k.items("jobs", STAGE_JOBS):
        assert job["status"].get("succeeded") == 1, (job["metadata"]["name"], job["status"])

    ftjs = {f["metadata"]["name"]: f for f in json.loads(k.kubectl("get", "ftj", "-o", "json").stdout)["items"]}
    for name, ftj in ftjs.items():
        state = {c["type"]: c["status"] for c in ftj["status"]["conditions"]}
        assert state["Failed"] == "False" and state["Passed"] == "True", (name, ftj["status"]["conditions"])
        assert all(ftj["status"]["stages"][s]["result"]["ok"] for s in STAGES), name
    events = our_events(k)
    # A FineTuneJob's transitions happen once each. A GPTModel's Ready may go False and True again with each
    # rollout, so its transition Events may repeat, but only in turn: a condition is never announced True twice
    # without a False (or Unknown) between.
    duplicates = [e for e, n in collections.Counter(events).items() if n > 1 and e[0] in runs]
    assert not duplicates, duplicates
    for model in set(runs.values()):
        transitions = collections.defaultdict(collections.Counter)
        for obj, _, message in events:
            if obj == model and (found := re.match(r"^(\w+)=(True|False|Unknown):", message)):
                transitions[found.group(1)][found.group(2)] += 1
        for type_, counts in transitions.items():
            most = max(counts.values())
            assert most - (sum(counts.values()) - most) <= 1, (model, type_, [e for e in events if e[0] == model])
    for model in sorted(set(runs.values())):
        expected = expected_revision(ftjs, runs, model)
        status = (k.get("gptmodel", model) or {})["status"]
        assert status["servingRevision"] == expected, (model, status)
        promoted = sorted(r for r, m in runs.items() if m == model
                          and any(c["type"] == "Promoted" and c["status"] == "True"
                                  for c in ftjs[r]["status"]["conditions"]))
        assert promoted == [expected], (model, promoted)
        annotations = (k.get("deployment", model) or {})["metadata"]["annotations"]
        assert annotations["gptops.io/revision"] == expected, (model, annotations)
        # The revision it serves was announced once, however many passes and operators saw it.
        announced = [m for obj, reason, m in events if obj == model and reason == "Promoted"
                     and f"Serving revision {expected} " in m]
        assert len(announced) == 1 or (killed and not announced), (model, [e for e in events if e[0] == model])
    unannounced = 0
    for run in runs:
        created = [m for obj, reason, m in events if obj == run and reason == "JobCreated"]
        assert len(created) == len(STAGES) or (killed and len(created) < len(STAGES)), (run, created)
        unannounced += len(STAGES) - len(created)
    return {"runs": len(runs), "jobs": sum(jobs.values()), "events": len(events), "jobsNotAnnounced": unannounced}


def drive(k: Cluster, finisher: Finisher, runs: dict[str, str], timeout: float) -> None:
    """Finish stage Pods until every run is settled (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while not settled(k, runs):
        if time.monotonic() > deadline:
            pytest.fail(f"runs not settled after {timeout}s:\n" + k.kubectl("get", "ftj,gptmodel,jobs").stdout,
                        pytrace=False)
        finisher.step()
        time.sleep(0.5)


# --- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("component", "down"), [("kube-apiserver", 30), ("etcd", 5)])
def test_the_operator_rides_out_a_control_plane_restart(control_plane, k: Cluster, operators, component: str,
                                                        down: float) -> None:
    op = operators()
    runs = fleet(k, models=2, runs_per_model=2)
    finisher = Finisher(k)
    # Mid-run: every prepare stage done, every training Pod running.
    wait_for(lambda: finisher.step(("prepare",)) >= 0 and all(k.stage_job(r, "train") for r in runs),
             "a train Job for every run", timeout=400)
    wait_for(lambda: sum(p["status"].get("phase") == "Running" for p in k.items("pods", f"{LABEL_STAGE}=train"))
             == len(runs), "every training Pod Running", timeout=300)
    # One run's training ends just as the component goes: its Pod's completion lands around the outage.
    first = min(runs)
    pod = next(p for p in k.items("pods", f"{LABEL_STAGE}=train,{LABEL_FINETUNEJOB}={first}"))
    k.kubectl("annotate", "pod", pod["metadata"]["name"], f"{RESULT_ANNOTATION}=" + json.dumps(
        {"apiVersion": "gptops.io/stage-result/v1", "stage": "train", "ok": True, "message": "train done",
         "metrics": {}, "artifacts": {}, "digest": "sha256:0123"}))
    finisher.finished.add(pod["metadata"]["uid"])

    control_plane.stop_component(component)
    time.sleep(down)
    assert op.proc.poll() is None, op.output[-4000:]
    control_plane.start_component(component)
    # /readyz can answer before the CRDs' paths are served again (503 "before all known HTTP paths have been
    # installed"); the test's own kubectl waits for them, the operator retries on its own.
    wait_for(lambda: k.kubectl("get", "ftj", check=False).returncode == 0, "the CRDs served again", timeout=120)

    # The same operator process goes on: no restart of its own.
    drive(k, finisher, runs, timeout=900)
    assert op.proc.poll() is None, op.output[-4000:]
    assert_complete_and_unique(k, runs)


@pytest.mark.timeout(1800)
def test_a_deleted_node_s_training_pod_is_replaced_and_resumes_in_the_same_paths(control_plane, k: Cluster,
                                                                                operators) -> None:
    """kwok has no trainer: this shows what the operator controls. The replacement Pod (the Job controller's, after
    the Pod garbage collector removes the lost node's Pod) runs the same command on the same artifacts directory,
    where `pipeline/train.py` resumes from the newest `checkpoint-*` (tests/pipeline/test_pipeline_resume_lora.py
    kills a real training process and resumes it from there)."""
    nodes = [f"{k.ns}-{i}"[-63:].lstrip("-") for i in range(2)]
    for name in nodes:
        node = build_fake_node(name)
        node["metadata"]["labels"][FAULT_NODE_LABEL] = k.ns
        k.cp.kubectl("create", "-f", "-", input=json.dumps(node))
    try:
        wait_for(lambda: all(any(c["type"] == "Ready" and c["status"] == "True"
                                 for c in ((json.loads(k.cp.kubectl("get", "node", n, "-o", "json").stdout)
                                            .get("status") or {}).get("conditions") or []))
                             for n in nodes), "the test's nodes Ready", timeout=180)
        operators()
        runs = fleet(k, models=1, runs_per_model=1, training={"nodeSelector": {FAULT_NODE_LABEL: k.ns}})
        (run,) = runs
        finisher = Finisher(k)
        wait_for(lambda: finisher.step(("prepare",)) >= 0 and k.stage_job(run, "train"), "the train Job",
                 timeout=400)
        train_job = k.stage_job_name(run, "train")

        def running() -> list[dict[str, Any]]:
            return [p for p in k.items("pods", f"job-name={train_job}")
                    if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]

        lost = wait_for(lambda: next(iter(running()), None), "the training Pod Running", timeout=300)
        assert lost["spec"]["nodeName"] in nodes
        k.cp.kubectl("delete", "node", lost["spec"]["nodeName"], "--timeout=30s")

        # The Pod garbage collector removes Pods of a node that is gone (after its quarantine, about 40 s); the Job
        # controller makes another on the node that is left, and does not count the loss as a failure.
        replacement = wait_for(lambda: next((p for p in running() if p["metadata"]["uid"] != lost["metadata"]["uid"]),
                                            None), "a replacement training Pod", timeout=400)
        assert replacement["spec"]["nodeName"] == next(n for n in nodes if n != lost["spec"]["nodeName"])
        was, now = lost["spec"], replacement["spec"]
        for field in ("command", "args", "env", "volumeMounts", "workingDir"):
            assert now["containers"][0].get(field) == was["containers"][0].get(field), field
        assert now["volumes"] == was["volumes"]
        # The revision's directory, where the trainer keeps checkpoints/checkpoint-<step>/ and resumes from.
        args = now["containers"][0]["args"]
        assert args[args.index("--artifacts") + 1].startswith(f"/artifacts/{k.ns}/{run}/"), args
        job = k.get("job", train_job) or {}
        assert not job["status"].get("failed"), job["status"]
        assert k.condition("ftj", run, "Failed")["status"] == "False"

        drive(k, finisher, runs, timeout=600)
        figures = assert_complete_and_unique(k, runs)
        assert figures["jobs"] == 3
    finally:
        k.cp.kubectl("delete", "node", *nodes, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.timeout(2400)
def test_an_operator_killed_every_few_seconds_completes_twenty_runs_once(k: Cluster, operators) -> None:
    runs = fleet(k, models=5, runs_per_model=4)
    finisher = Finisher(k)
    op = operators()
    kills = 0
    deadline = time.monotonic() + 1800
    # At work (it has finished a pass: started, watching, reconciling), then alive for 4 to 10 s more, killed,
    # down for a moment while kwok and the Job controller go on; at most 80 times. (Killed at fixed times instead,
    # a slow start on a loaded machine can use up every life before the first pass.)
    while kills < 80 and not settled(k, runs):
        if time.monotonic() > deadline:
            pytest.fail(f"not settled after {kills} kills:\n" + k.kubectl("get", "ftj,gptmodel").stdout,
                        pytrace=False)
        wait_for(lambda op=op: op.reconciles("FineTuneJob") + op.reconciles("GPTModel") > 0,
                 "the operator's first pass", timeout=180)
        alive_until = time.monotonic() + 4 + 2 * (kills % 4)
        # The stage Pods finish only in every other life, and each run finishes at most one stage in a life, so the
        # lifecycle spans several kills however fast the operator is (a run's three stages take at least six lives).
        finishing, finished_this_life = kills % 2 == 1, set()
        while time.monotonic() < alive_until:
            if finishing:
                finisher.step(once=finished_this_life)
            time.sleep(0.3)
        op.kill()
        kills += 1
        op = operators()
    # The last one, left running, settles everything.
    drive(k, finisher, runs, timeout=600)
    figures = assert_complete_and_unique(k, runs, killed=True)
    assert kills >= 5, f"only {kills} kills: the runs settled before the test had killed the operator enough"
    print(json.dumps({"kills": kills, **figures}))
