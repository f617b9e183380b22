"""The operator at scale on the local control plane: N FineTuneJobs over N/10 GPTModels, kwok finishing the stage Pods
with results, and the same API server creating the same N prepare Jobs directly as the limit. Prints one JSON object.

    .venv/bin/python benchmarks/bench_operator.py --runs 100 [--out result.json]

What it measures (bench-side clocks: the time this process saw each watch event, so every figure includes the same
watch delay as the baseline):
- latency from a FineTuneJob's create returning to its prepare Job appearing; from a stage Job's `Complete` to the
  next stage's Job; from the evaluate Job's `Complete` to `Passed=True` and to the GPTModel serving it;
- the operator (`gptops operator`, a subprocess under its own user) peak RSS, CPU seconds, passes per second, and its
  RSS after everything was deleted;
- API requests of that user, reads (get, list, watch) and writes apart, per FineTuneJob lifecycle: the API server's
  priority-and-fairness counters (`apiserver_flowcontrol_dispatched_requests_total`) of two FlowSchemas that match
  only the operator's user;
- the limit: the same N prepare Jobs (built by gptops' own builders) created one after another with the client in
  another namespace, before the operator starts; ratios of our figures to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

import psutil  # noqa: E402
import urllib3  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402

from gptops.api.constants import LABEL_FINETUNEJOB, LABEL_MANAGED_BY, LABEL_STAGE, MANAGED_BY  # noqa: E402
from gptops.api.finetunejob import FineTuneJob  # noqa: E402
from gptops.api.gptmodel import GPTModel  # noqa: E402
from gptops.builders.job import build_stage_children  # noqa: E402
from gptops.devcluster import cluster as devcluster  # noqa: E402
from gptops.devcluster.pki import issue_client_cert  # noqa: E402
from gptops.devcluster.stages import RESULT_ANNOTATION  # noqa: E402

GROUP, VERSION = "gptops.io", "v1alpha1"
NAMESPACE, DIRECT_NAMESPACE = "bench", "bench-direct"
OPERATOR_USER = "gptops-operator"
STAGE_ORDER = ("prepare", "train", "evaluate")
METRICS = {"perplexity": 42.0, "baselinePerplexity": 120.0, "bleu": 3.5, "baselineBleu": 1.0}
READ_VERBS = ["get", "list", "watch"]
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
PODS_PER_NODE, GPUS_PER_NODE = 250, 64


def gptmodel(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPTModel", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
                     "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
                     "serving": {"replicas": 1, "resources": {"gpus": 1}}}}


def finetunejob(name: str, model: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"model": {"name": model}, "startFrom": "source",
                     "dataset": {"source": {"pvc": {"claimName": "gptops-artifacts", "path": "data.jsonl"}}},
                     "training": {"method": "full", "resources": {"gpus": 1}},
                     "evaluation": {"thresholds": {"maxPerplexity": 100}, "promote": True}}}


def stage_result(stage: str) -> str:
    return json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": True,
                       "message": f"{stage} done", "metrics": METRICS if stage == "evaluate" else {},
                       "artifacts": {}, "digest": "sha256:0123"})


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))], 4)

    return {"count": len(values), "p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": round(ordered[-1], 4),
            "mean": round(statistics.fmean(values), 4)}


class Recorder:
    """Watches (bounded by a deadline) that stamp, with this process's clock, when each thing was first seen."""

    def __init__(self, api: k8s.ApiClient, deadline: float) -> None:
        self.api, self.deadline = api, deadline
        self.lock = threading.Lock()
        self.job_added: dict[str, float] = {}     # Job name -> seen
        self.job_complete: dict[str, float] = {}  # Job name -> Complete seen
        self.job_owner: dict[str, tuple[str, str]] = {}  # Job name -> (ftj, stage)
        self.passed: dict[str, float] = {}        # ftj -> Passed=True seen
        self.served: dict[str, float] = {}        # ftj -> first seen as some GPTModel's servingRevision
        self.models_serving: dict[str, str] = {}  # model -> servingRevision
        self.finished_pods: set[str] = set()
        self.ftj_seen: dict[str, float] = {}      # ftj -> first seen (when a watcher can know of it)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        core, batch, custom = k8s.CoreV1Api(self.api), k8s.BatchV1Api(self.api), k8s.CustomObjectsApi(self.api)
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_STAGE}"
        self._spawn(batch.list_namespaced_job, self._on_job, label_selector=selector)
        self._spawn(core.list_namespaced_pod, self._on_pod, label_selector=selector)
        self._spawn(custom.list_namespaced_custom_object, self._on_ftj, GROUP, VERSION, NAMESPACE, "finetunejobs",
                    ns_positional=False)
        self._spawn(custom.list_namespaced_custom_object, self._on_model, GROUP, VERSION, NAMESPACE, "gptmodels",
                    ns_positional=False)

    def _spawn(self, call: Any, handle: Any, *args: Any, ns_positional: bool = True, **kwargs: Any) -> None:
        def run() -> None:
            client = k8s_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
            method = getattr(type(call.__self__)(client), call.__name__)
            call_args = (NAMESPACE, *args) if ns_positional else args
            version = None
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                stream = k8s_watch.Watch()
                try:
                    for event in stream.stream(method, *call_args, resource_version=version, timeout_seconds=30,
                                               allow_watch_bookmarks=False, **kwargs):
                        obj = event["object"]
                        version = (obj["metadata"]["resourceVersion"] if isinstance(obj, dict)
                                   else obj.metadata.resource_version)
                        handle(event["type"], obj, client)
                        if self.stop.is_set():
                            break
                except k8s.exceptions.ApiException as err:
                    if err.status == 410:
                        version = None
                        continue
                    time.sleep(0.5)  # a loaded API server's 429/5xx: watch again rather than lose the watch
                except Exception:  # the cluster going away at the end, or a dropped connection: watch again
                    if self.stop.is_set():
                        return
                    version = None  # from a fresh list: what failed in the handler is seen again
                    time.sleep(0.5)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    @staticmethod
    def _dict(obj: Any, client: k8s.ApiClient) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else client.sanitize_for_serialization(obj)

    def _on_job(self, type_: str, obj: Any, client: k8s.ApiClient) -> None:
        job = self._dict(obj, client)
        now = time.monotonic()
        meta = job["metadata"]
        name = meta["name"]
        with self.lock:
            if type_ == "DELETED":
                return
            self.job_added.setdefault(name, now)
            labels = meta.get("labels") or {}
            self.job_owner[name] = (labels.get(LABEL_FINETUNEJOB, ""), labels.get(LABEL_STAGE, ""))
            if any(c.get("type") == "Complete" and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or ()):
                self.job_complete.setdefault(name, now)

    def _on_pod(self, type_: str, obj: Any, client: k8s.ApiClient) -> None:
        pod = self._dict(obj, client)
        meta = pod["metadata"]
        if type_ == "DELETED" or (pod.get("status") or {}).get("phase") != "Running":
            return
        if RESULT_ANNOTATION in (meta.get("annotations") or {}) or meta["name"] in self.finished_pods:
            return
        self.finished_pods.add(meta["name"])
        stage = (meta.get("labels") or {}).get(LABEL_STAGE, "")
        patch = {"metadata": {"annotations": {RESULT_ANNOTATION: stage_result(stage)}}}
        try:
            k8s.CoreV1Api(client).patch_namespaced_pod(meta["name"], NAMESPACE, patch)
        except k8s.exceptions.ApiException as err:  # gone meanwhile (its Job replaced it): the next one is finished
            if err.status != 404:
                self.finished_pods.discard(meta["name"])
        except Exception:  # a timeout on a loaded API server: its next event or the re-list tries again
            self.finished_pods.discard(meta["name"])
            raise

    def _on_ftj(self, type_: str, obj: Any, client: k8s.ApiClient) -> None:
        if type_ == "DELETED":
            return
        now = time.monotonic()
        with self.lock:
            self.ftj_seen.setdefault(obj["metadata"]["name"], now)
        conditions = (obj.get("status") or {}).get("conditions") or ()
        if any(c.get("type") == "Passed" and c.get("status") == "True" for c in conditions):
            with self.lock:
                self.passed.setdefault(obj["metadata"]["name"], now)

    def _on_model(self, type_: str, obj: Any, client: k8s.ApiClient) -> None:
        if type_ == "DELETED":
            return
        now = time.monotonic()
        serving = (obj.get("status") or {}).get("servingRevision")
        with self.lock:
            self.models_serving[obj["metadata"]["name"]] = serving or ""
            if serving:
                self.served.setdefault(serving, now)


def run_kubectl(kubectl: str, kubeconfig: Path, *args: str, input: str | None = None) -> str:
    result = subprocess.run([kubectl, *args], env={**os.environ, "KUBECONFIG": str(kubeconfig)}, input=input,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def scrape(url: str, context: Any = None) -> str:
    with urllib.request.urlopen(url, context=context, timeout=10) as resp:
        return resp.read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_buckets(text: str, name: str) -> dict[tuple[str, ...], dict[float, float]]:
    """A histogram's cumulative bucket counts, by its labels other than `le`."""
    out: dict[tuple[str, ...], dict[float, float]] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            le = float(labels.pop("le"))
            out.setdefault(tuple(f"{k}={v}" for k, v in sorted(labels.items())), {})[le] = float(
                line.rsplit(" ", 1)[1])
    return out


def histogram_delta(before: str, after: str, name: str) -> dict[str, Any]:
    """A histogram of the operator's between two scrapes, by its labels: how many, the share over 0.1, 0.5 and 1 s,
    and the bucket bound under which 99% of them fell (the work queue's waits by lane, the passes' durations)."""
    start, end = (histogram_buckets(t, name) for t in (before, after))
    result: dict[str, Any] = {}
    for labels, buckets in sorted(end.items()):
        counts = {le: n - start.get(labels, {}).get(le, 0.0) for le, n in buckets.items()}
        total = counts.get(float("inf"), 0.0)
        if not total:
            continue
        bounds = sorted(counts)
        result[" ".join(labels)] = {
            "count": int(total),
            **{f"over{t}s": round(1 - counts[t] / total, 4) for t in (0.1, 0.5, 1.0) if t in counts},
            "p99AtMost": next((le for le in bounds if counts[le] >= 0.99 * total), None),
        }
    return result


def apiserver_metrics(cp: devcluster.DevCluster, attempts: int = 6) -> str:
    """The API server's /metrics as the admin: a loaded API server can take longer than a request's 5 s (an N=1000
    run lost its figures to one such timeout at the end), so 60 s a try, a few tries."""
    import ssl

    context = ssl.create_default_context(cafile=str(cp.pki.ca_cert))
    context.load_cert_chain(str(cp.pki.admin_cert), str(cp.pki.admin_key))
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{cp.server}/metrics", context=context, timeout=60) as resp:
                return resp.read().decode()
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def operator_requests(cp: devcluster.DevCluster) -> dict[str, float]:
    text = apiserver_metrics(cp)
    return {kind: metric_sum(text, "apiserver_flowcontrol_dispatched_requests_total",
                             flow_schema=f"gptops-bench-{kind}")
            for kind in ("reads", "writes", "events")}


#: The writes of the operator's own resources, by "resource[/subresource] VERB", from apiserver_request_total:
#: (resource, subresource, verbs) that only the operator makes (the Job controller writes Jobs' status by PUT).
OWN_WRITES = (("finetunejobs", "status", ("PATCH",)), ("gptmodels", "status", ("PATCH",)),
              ("jobs", "", ("POST", "DELETE")), ("deployments", "", ("POST", "PATCH", "APPLY")),
              ("services", "", ("POST", "PATCH", "APPLY")))


def own_writes(cp: devcluster.DevCluster) -> dict[str, float]:
    text = apiserver_metrics(cp)
    out = {}
    for resource, sub, verbs in OWN_WRITES:
        for verb in verbs:
            key = f"{resource}{'/' + sub if sub else ''} {verb}"
            out[key] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("apiserver_request_total{") and f'resource="{resource}"' in line
                           and f'subresource="{sub}"' in line and f'verb="{verb}"' in line)
    return out


def setup_cluster(cp: devcluster.DevCluster, api: k8s.ApiClient, kubectl: str, nodes: int) -> Path:
    """CRDs, fake nodes, the operator's user (cluster-admin, its own FlowSchemas), the namespaces and volume."""
    run_kubectl(kubectl, cp.kubeconfig, "apply", "--server-side", "-f", str(ROOT / "crds"))
    core = k8s.CoreV1Api(api)
    for i in range(nodes):
        node = devcluster.build_fake_node(f"bench-node-{i}")
        capacity = {**devcluster.NODE_CAPACITY, "pods": str(PODS_PER_NODE), "nvidia.com/gpu": str(GPUS_PER_NODE)}
        node["status"] = {"capacity": capacity, "allocatable": capacity}
        core.create_node(node)
    cert, key = issue_client_cert(cp.pki, OPERATOR_USER)
    kubeconfig = devcluster.write_kubeconfig(cp.dir / "operator.kubeconfig", cp.server, cp.pki.ca_cert, cert, key,
                                             OPERATOR_USER)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "gptops-bench-operator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR_USER}]},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
         "metadata": {"name": "gptops-bench"},
         "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 100, "lendablePercent": 0,
                                                 "limitResponse": {"type": "Reject"}}}},
    ]
    for kind, verbs, resources, precedence in (("events", WRITE_VERBS, ["events"], 90),
                                               ("reads", READ_VERBS, ["*"], 100),
                                               ("writes", WRITE_VERBS, ["*"], 100)):
        docs.append({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": f"gptops-bench-{kind}"},
            "spec": {"matchingPrecedence": precedence, "priorityLevelConfiguration": {"name": "gptops-bench"},
                     "distinguisherMethod": {"type": "ByUser"},
                     "rules": [{"subjects": [{"kind": "User", "user": {"name": OPERATOR_USER}}],
                                "resourceRules": [{"verbs": verbs, "apiGroups": ["*"], "resources": resources,
                                                   "clusterScope": True, "namespaces": ["*"]}],
                                **({"nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}
                                   if kind == "reads" else {})}]}})
    for ns in (NAMESPACE, DIRECT_NAMESPACE):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    docs += [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "bench-artifacts"},
         "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/tmp/bench-artifacts"},
                  "claimRef": {"namespace": NAMESPACE, "name": "gptops-artifacts"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "gptops-artifacts", "namespace": NAMESPACE},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}},
                  "volumeName": "bench-artifacts", "storageClassName": ""}},
    ]
    run_kubectl(kubectl, cp.kubeconfig, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                             "items": docs}))
    deadline = time.monotonic() + 120
    while True:
        crds_ok = all(run_kubectl(kubectl, cp.kubeconfig, "get", "crd", name, "-o",
                                  "jsonpath={.status.conditions[?(@.type=='Established')].status}").strip() == "True"
                      for name in ("gptmodels.gptops.io", "finetunejobs.gptops.io"))
        sa = [core.list_namespaced_service_account(ns, field_selector="metadata.name=default").items
              for ns in (NAMESPACE, DIRECT_NAMESPACE)]
        if crds_ok and all(sa):
            return kubeconfig
        if time.monotonic() > deadline:
            raise RuntimeError("CRDs not Established or namespaces without a default ServiceAccount after 120 s")
        time.sleep(0.5)


def direct_jobs(api: k8s.ApiClient, runs: int, models: int) -> dict[str, Any]:
    """The limit: the same N prepare Jobs gptops would create, created one after another with the client (as many
    requests as the operator's part of it: one create each)."""
    batch = k8s.BatchV1Api(api)
    manifests = []
    for i in range(runs):
        model = gptmodel(f"model-{i % models:03d}")
        ftj = finetunejob(f"run-{i:04d}", model["metadata"]["name"])
        model["metadata"]["uid"] = ftj["metadata"]["uid"] = f"00000000-0000-0000-0000-{i:012d}"
        job = build_stage_children(FineTuneJob.from_dict(ftj), GPTModel.from_dict(model), "prepare")[-1]
        job["metadata"]["namespace"] = DIRECT_NAMESPACE
        job["metadata"].pop("ownerReferences", None)
        job["spec"]["suspend"] = True  # the API server's work only: no Pods compete with the operator's run after
        manifests.append(job)
    latencies = []
    started = time.monotonic()
    for job in manifests:
        t0 = time.monotonic()
        batch.create_namespaced_job(DIRECT_NAMESPACE, job, _preload_content=False)
        latencies.append(time.monotonic() - t0)
    seconds = time.monotonic() - started
    # The API server's own cost of accepting the FineTuneJobs (schema, CEL rules), where the operator does not watch.
    custom = k8s.CustomObjectsApi(api)
    ftj_latencies = []
    ftj_started = time.monotonic()
    for i in range(runs):
        ftj = finetunejob(f"run-{i:04d}", f"model-{i % models:03d}")
        ftj["metadata"]["namespace"] = DIRECT_NAMESPACE
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, DIRECT_NAMESPACE, "finetunejobs", ftj,
                                               _preload_content=False)
        ftj_latencies.append(time.monotonic() - t0)
    ftj_seconds = time.monotonic() - ftj_started
    return {"seconds": round(seconds, 3), "jobsPerSecond": round(runs / seconds, 1),
            "createLatencySeconds": percentiles(latencies),
            "finetunejobCreateSeconds": round(ftj_seconds, 3),
            "finetunejobCreateLatencySeconds": percentiles(ftj_latencies)}


def start_operator(kubeconfig: Path, log: Path, metrics_port: int, health_port: int) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.Popen(
        [sys.executable, "-c", "from gptops.cli import app; app()", "operator", "-n", NAMESPACE,
         "--metrics-port", str(metrics_port), "--health-port", str(health_port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


class Sampler(threading.Thread):
    """Peak RSS of a process, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return


def wait_status(custom: k8s.CustomObjectsApi, plural: str, names: list[str], timeout: float) -> None:
    """Until the operator wrote a status (observedGeneration) on each of these objects."""
    deadline = time.monotonic() + timeout
    left = set(names)
    while left:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)["items"]
        left -= {o["metadata"]["name"] for o in items if (o.get("status") or {}).get("observedGeneration")}
        if left and time.monotonic() > deadline:
            raise RuntimeError(f"no status on {plural} {sorted(left)[:5]} after {timeout:.0f} s")
        time.sleep(0.2)


def warm_up(api: k8s.ApiClient, log: Path) -> None:
    """The operator is up when its watches are: a FineTuneJob of a missing GPTModel gets its status, then goes. (Its
    first watch requests can meet an API server whose storage for the new CRDs is still initializing, and retry.)"""
    custom = k8s.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs",
                                           finetunejob("warm-up", "no-such-model"))
    try:
        wait_status(custom, "finetunejobs", ["warm-up"], 120)
    except RuntimeError as err:
        raise RuntimeError(f"{err}; the operator's log:\n{log.read_text()[-3000:]}") from None
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs", "warm-up")
    deadline = time.monotonic() + 60
    while custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs")["items"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the warm-up FineTuneJob was not deleted within 60 s")
        time.sleep(0.2)


def rss_after_deletes(api: k8s.ApiClient, pid: int) -> int:
    """The operator's RSS once everything is deleted and it saw it go (its collector runs in a pass). A delete of a
    large collection can outlast the request's timeout (504) while the API server goes on deleting: wait for it."""
    custom = k8s.CustomObjectsApi(api)
    for plural in ("finetunejobs", "gptmodels"):
        try:
            custom.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, _request_timeout=300)
        except k8s.exceptions.ApiException as err:
            if err.status not in (500, 504):
                raise
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if not (k8s.BatchV1Api(api).list_namespaced_job(NAMESPACE, limit=1).items
                    or custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs", limit=1)["items"]):
                break
        except (k8s.exceptions.ApiException, urllib3.exceptions.HTTPError):  # a busy API server dropped the call
            pass
        time.sleep(2)
    time.sleep(10)
    return psutil.Process(pid).memory_info().rss


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The issue's target for p99 apply -> prepare Job at N=1000, drawn on the plot.
TARGET_P99_SECONDS = 1.0


def plot(png: Path, results: list[Path]) -> None:
    """p99 apply -> prepare Job and the throughput ratio against N, one line per label (the file's stem)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(json.dumps({"plot": None, "reason": "matplotlib is not installed"}))
        return
    runs: dict[str, list[tuple[int, float]]] = {}
    for path in results:
        data = json.loads(path.read_text())
        label = path.stem.rsplit("-", 1)[0]
        runs.setdefault(label, []).append((data["runs"], data["latencySeconds"]["applyToPrepareJob"]["p99"]))
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=80)
    for label, points in sorted(runs.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(TARGET_P99_SECONDS, color="grey", linestyle="--", linewidth=1, label="target at N=1000")
    ax.set_xlabel("FineTuneJobs applied (N)")
    ax.set_ylabel("p99 apply -> prepare Job (s)")
    ax.set_yscale("log")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(png)
    print(json.dumps({"plot": str(png)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="FineTuneJobs (100, 300, 1000); GPTModels: runs / 10")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for every run to pass and be served")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="apply the FineTuneJobs at this many per second (default: all at once, as fast as the "
                             "client can)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="leave the cluster's state directory")
    parser.add_argument("--profile", type=Path, metavar="TXT",
                        help="sample the operator with py-spy (which must be installed beside this Python) from the "
                             "first apply to the last run served, and write its collapsed stacks here")
    parser.add_argument("--plot", type=Path, nargs="+", metavar=("PNG", "JSON"),
                        help="no run: plot p99 latencies against N from earlier --out files into PNG (matplotlib)")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot[0], args.plot[1:])
        return
    runs, models = args.runs, max(1, args.runs // 10)
    nodes = max(2, math.ceil(runs * 1.2 / min(PODS_PER_NODE, GPUS_PER_NODE)))
    kubectl = str(Path(sys.executable).parent / "kubectl")
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    cp = devcluster.start(workdir / "cluster", nodes=0, die_with_parent=True)
    operator = None
    try:
        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
        api = k8s_config.new_client_from_config(config_file=str(cp.kubeconfig))
        op_kubeconfig = setup_cluster(cp, api, kubectl, nodes)
        direct = direct_jobs(api, runs, models)

        metrics_port, health_port = free_port(), free_port()
        operator = start_operator(op_kubeconfig, workdir / "operator.log", metrics_port, health_port)
        sampler = Sampler(operator.pid)
        sampler.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                break
            except OSError:
                if operator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the operator did not start:\n" + (workdir / "operator.log").read_text()[-3000:])
                time.sleep(0.3)
        warm_up(api, workdir / "operator.log")
        idle_rss = psutil.Process(operator.pid).memory_info().rss
        requests_before = operator_requests(cp)
        own_before = own_writes(cp)
        cpu_before = sum(psutil.Process(operator.pid).cpu_times()[:2])
        metrics_before = scrape(f"http://127.0.0.1:{metrics_port}/metrics")

        profiler = None
        if args.profile:
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(operator.pid), "--rate", "50",
                 "--format", "raw", "--output", str(args.profile), "--threads", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=(workdir / "py-spy.log").open("w"))
        recorder = Recorder(api, time.monotonic() + args.timeout + 120)
        recorder.start()
        time.sleep(1)
        custom = k8s.CustomObjectsApi(api)
        for m in range(models):
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "gptmodels", gptmodel(f"model-{m:03d}"))
        # The GPTModels exist before the runs (a team's models outlive its fine-tunes): their first passes are done.
        wait_status(custom, "gptmodels", [f"model-{m:03d}" for m in range(models)], 120)
        applied: dict[str, float] = {}
        t_apply = time.monotonic()
        for i in range(runs):
            if args.rate:  # paced: run i is applied at i / rate seconds
                time.sleep(max(0.0, t_apply + i / args.rate - time.monotonic()))
            name = f"run-{i:04d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs",
                                                   finetunejob(name, f"model-{i % models:03d}"))
            applied[name] = time.monotonic()
        apply_seconds = time.monotonic() - t_apply

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with recorder.lock:
                done = len(recorder.passed) >= runs and all(
                    recorder.models_serving.get(f"model-{m:03d}") for m in range(models))
            if done:
                break
            if operator.poll() is not None:
                raise RuntimeError("the operator exited:\n" + (workdir / "operator.log").read_text()[-3000:])
            time.sleep(0.5)
        finished = time.monotonic()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        time.sleep(3)  # let the last status writes land in the counters
        requests_after = operator_requests(cp)
        own_after = own_writes(cp)
        op = psutil.Process(operator.pid)
        cpu_seconds = sum(op.cpu_times()[:2]) - cpu_before
        op_metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        passes = metric_sum(op_metrics, "gptops_reconcile_total")
        pass_errors = metric_sum(op_metrics, "gptops_reconcile_errors_total")
        wakes: dict[str, float] = {}
        for line in op_metrics.splitlines():
            if line.startswith("gptops_reconcile_wakes_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
                key = f"{labels.get('kind')} <- {labels.get('source')} ({labels.get('outcome')})"
                wakes[key] = wakes.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        peak_rss = sampler.peak

        with recorder.lock:
            by_ftj: dict[str, dict[str, str]] = {}
            for job, (ftj, stage) in recorder.job_owner.items():
                by_ftj.setdefault(ftj, {})[stage] = job
            to_prepare = [recorder.job_added[jobs["prepare"]] - applied[f]
                          for f, jobs in by_ftj.items() if "prepare" in jobs and f in applied]
            to_seen = [recorder.ftj_seen[f] - t for f, t in applied.items() if f in recorder.ftj_seen]
            handoffs: dict[str, list[float]] = {}
            for f, jobs in by_ftj.items():
                for before, after in zip(STAGE_ORDER, STAGE_ORDER[1:]):
                    if before in jobs and after in jobs and jobs[before] in recorder.job_complete:
                        handoffs.setdefault(f"{before}->{after}", []).append(
                            recorder.job_added[jobs[after]] - recorder.job_complete[jobs[before]])
            to_passed, to_served = [], []
            for f, jobs in by_ftj.items():
                done_at = recorder.job_complete.get(jobs.get("evaluate", ""))
                if done_at is None:
                    continue
                if f in recorder.passed:
                    to_passed.append(recorder.passed[f] - done_at)
                if f in recorder.served:
                    to_served.append(recorder.served[f] - done_at)
            last_prepare = max((recorder.job_added[j["prepare"]] for j in by_ftj.values() if "prepare" in j),
                               default=float("nan"))
            jobs_per_stage = {s: sum(1 for (_, st) in recorder.job_owner.values() if st == s) for s in STAGE_ORDER}
            passed_count = len(recorder.passed)

        prepare_all = last_prepare - t_apply
        reads = requests_after["reads"] - requests_before["reads"]
        object_writes = requests_after["writes"] - requests_before["writes"]
        events = requests_after["events"] - requests_before["events"]
        writes = object_writes + events

        mib = 1024 * 1024
        result = {
            "benchmark": "bench_operator",
            "runs": runs, "gptmodels": models, "nodes": nodes,
            "completed": {"passed": passed_count, "modelsServing": sum(1 for v in recorder.models_serving.values()
                                                                        if v),
                          "jobsPerStage": jobs_per_stage, "seconds": round(finished - t_apply, 2)},
            "applySeconds": round(apply_seconds, 3), "applyRate": args.rate or None,
            "latencySeconds": {
                "applyToPrepareJob": percentiles(to_prepare),
                "applyToWatchSeen": percentiles(to_seen),  # this script's own watch: the watch's share of it
                **{k: percentiles(v) for k, v in handoffs.items()},
                "evaluateToPassed": percentiles(to_passed),
                "evaluateToServed": percentiles(to_served),
            },
            "prepareJobsSeconds": round(prepare_all, 3),
            "operator": {
                "passes": int(passes), "passErrors": int(pass_errors),
                "passesByKind": {k: int(metric_sum(op_metrics, "gptops_reconcile_total", kind=k))
                                 for k in ("FineTuneJob", "GPTModel")},
                "wakesPerFineTuneJob": {k: round(v / runs, 2) for k, v in sorted(wakes.items())},
                "passesPerSecond": round(passes / (finished - t_apply), 2),
                "queueWaitSeconds": histogram_delta(metrics_before, op_metrics, "gptops_reconcile_queue_seconds"),
                "passSeconds": histogram_delta(metrics_before, op_metrics, "gptops_reconcile_duration_seconds"),
                "cpuSeconds": round(cpu_seconds, 2),
                "rssMiB": {"idle": round(idle_rss / mib, 1), "peak": round(peak_rss / mib, 1)},
            },
            "apiRequestsPerFineTuneJob": {"reads": round(reads / runs, 2), "writes": round(writes / runs, 2),
                                          "writesWithoutEvents": round(object_writes / runs, 2),
                                          "eventWrites": round(events / runs, 2),
                                          "totalReads": int(reads), "totalWrites": int(writes),
                                          "writesByResource": {k: round((own_after[k] - own_before[k]) / runs, 2)
                                                               for k in own_after if own_after[k] > own_before[k]}},
            "direct": direct,
            "ratios": {
                "throughput": round(direct["seconds"] / prepare_all, 3),
                "applyToPrepareP50OverDirectCreateP50": round(
                    percentiles(to_prepare).get("p50", float("nan"))
                    / direct["createLatencySeconds"]["p50"], 1) if to_prepare else None,
            },
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "loadAverage": [round(x, 2) for x in os.getloadavg()],
                            "resyncSeconds": float(os.environ.get("GPTOPS_RESYNC_SECONDS", 60))},
        }
        if args.out:  # the figures so far, should the deletes below fail
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        result["operator"]["rssMiB"]["afterDelete"] = round(rss_after_deletes(api, operator.pid) / mib, 1)
        recorder.stop.set()
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        errors = [line for line in (workdir / "operator.log").read_text().splitlines()
                  if re.search(r"\b(ERROR|Traceback)\b", line)]
        if errors:
            print(f"operator log has {len(errors)} error lines, first: {errors[0][:300]}", file=sys.stderr)
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        devcluster.stop(workdir / "cluster")
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
