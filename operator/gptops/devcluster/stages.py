"""The kwok Stages that play kubelet for the dev cluster's fake nodes, and the annotations tests use to steer them.

A scheduled Pod goes Running and Ready. A Pod annotated `kwok.gptops.io/result` then terminates: Succeeded when
`kwok.gptops.io/exit-code` is absent or "0", else Failed; each container's termination message is the result.
Pods without it keep running. A deleted Pod is killed (phase Failed, exit code 137), then removed. Shapes follow kwok v0.8.0's kustomize/stage files.
"""

from __future__ import annotations

RESULT_ANNOTATION = "kwok.gptops.io/result"
EXIT_CODE_ANNOTATION = "kwok.gptops.io/exit-code"
NODE_LEASE_SECONDS = 40

_NODE_CONDITIONS = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""

_NODE_INITIALIZE = (
    _NODE_CONDITIONS
    + """\
addresses:
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: amd64
  containerRuntimeVersion: {{ $kwokVersion }}
  kernelVersion: {{ $kwokVersion }}
  kubeProxyVersion: {{ $kwokVersion }}
  kubeletVersion: {{ $kwokVersion }}
  operatingSystem: linux
phase: Running
"""
)

_POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
{{ with NodeIPsWith .spec.nodeName }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""

# A terminated Pod, given $code (exit code), $message (termination message) and $ok (exit code 0).
_POD_TERMINATED = """\
conditions:
- lastTransitionTime: {{ $now | Quote }}
  reason: {{ if $ok }}PodCompleted{{ else }}PodFailed{{ end }}
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  reason: {{ if $ok }}PodCompleted{{ else }}PodFailed{{ end }}
  status: "False"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {{ $code }}
      finishedAt: {{ $now | Quote }}
      message: {{ $message | Quote }}
      reason: {{ if $ok }}Completed{{ else }}Error{{ end }}
      startedAt: {{ $now | Quote }}
{{ end }}
phase: {{ if $ok }}Succeeded{{ else }}Failed{{ end }}
"""

_POD_COMPLETE = (
    """\
{{ $now := Now }}
{{ $code := or (index .metadata.annotations "EXIT_CODE") "0" }}
{{ $message := index .metadata.annotations "RESULT" }}
{{ $ok := eq $code "0" }}
""".replace("EXIT_CODE", EXIT_CODE_ANNOTATION).replace("RESULT", RESULT_ANNOTATION)
    + _POD_TERMINATED
)

# What a kubelet does to a deleted Pod's containers (SIGTERM, then SIGKILL): they end, and the Pod reaches a terminal
# phase before its object goes. Controllers wait for that (a Job with a podFailurePolicy keeps its tracking finalizer
# on the Pod until the Pod is Failed or Succeeded).
_POD_KILLED = """\
{{ $now := Now }}
{{ $code := "137" }}
{{ $message := "" }}
{{ $ok := false }}
""" + _POD_TERMINATED

_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'
_NOT_DELETED = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}


def build_stages() -> list[dict]:
    """The Stages kwok loads with `--config`: node-initialize, node-heartbeat, pod-ready, pod-complete, pod-kill,
    pod-delete."""
    node_ready = {"key": _READY, "operator": "In", "values": ["True"]}
    return [
        _stage(
            "node-initialize",
            "Node",
            [{"key": _READY, "operator": "NotIn", "values": ["True"]}],
            {"statusTemplate": _NODE_INITIALIZE},
        ),
        # kwok renews each node's Lease (what the node controller watches); this refreshes the conditions rarely.
        _stage(
            "node-heartbeat",
            "Node",
            [{"key": ".status.phase", "operator": "In", "values": ["Running"]}, node_ready],
            {"statusTemplate": _NODE_CONDITIONS},
            delay={"durationMilliseconds": 600000, "jitterDurationMilliseconds": 610000},
        ),
        _stage(
            "pod-ready",
            "Pod",
            [
                _NOT_DELETED,
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": _READY, "operator": "NotIn", "values": ["True"]},
            ],
            {"statusTemplate": _POD_READY},
        ),
        _stage(
            "pod-complete",
            "Pod",
            [
                _NOT_DELETED,
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": f'.metadata.annotations["{RESULT_ANNOTATION}"]', "operator": "Exists"},
            ],
            {"statusTemplate": _POD_COMPLETE},
        ),
        _stage(
            "pod-kill",
            "Pod",
            [
                {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                {"key": ".status.phase", "operator": "In", "values": ["Pending", "Running"]},
            ],
            {"statusTemplate": _POD_KILLED},
        ),
        _stage(
            "pod-delete",
            "Pod",
            [
                {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                {"key": ".status.phase", "operator": "In", "values": ["Succeeded", "Failed"]},
            ],
            {"delete": True},
        ),
    ]


def _stage(name: str, kind: str, match: list[dict], next_: dict, delay: dict | None = None) -> dict:
    spec: dict = {"resourceRef": {"apiGroup": "v1", "kind": kind}, "selector": {"matchExpressions": match}}
    if delay:
        spec["delay"] = delay
    spec["next"] = next_
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}
