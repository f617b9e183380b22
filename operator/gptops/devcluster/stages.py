"""The kwok Stages that play kubelet for the dev cluster's fake nodes, and the annotations tests use to steer them.

A scheduled Pod goes Running and Ready. A Pod annotated `kwok.gptops.io/result` then terminates: Succeeded when
`kwok.gptops.io/exit-code` is absent or "0", else Failed; each container's termination message is the result.
`kwok.gptops.io/reason` names the failed container's reason (e.g. OOMKilled; "Error" without it).
Pods without the result keep running. A Pod whose image is MISSING_IMAGE stays Pending with ErrImagePull, as a kubelet
that cannot pull it says. A deleted Pod is killed (phase Failed, exit code 137), then removed. Shapes follow kwok
v0.8.0's kustomize/stage files.
"""

from __future__ import annotations

RESULT_ANNOTATION = "kwok.gptops.io/result"
EXIT_CODE_ANNOTATION = "kwok.gptops.io/exit-code"
REASON_ANNOTATION = "kwok.gptops.io/reason"
#: An image no registry serves: its Pods never start.
MISSING_IMAGE = "registry.invalid/gptops/missing:0"
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

# A terminated Pod, given $code (exit code), $message (termination message), $ok (exit code 0) and $reason (the
# failed container's reason).
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
      reason: {{ if $ok }}Completed{{ else }}{{ $reason }}{{ end }}
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
{{ $reason := or (index .metadata.annotations "REASON") "Error" }}
""".replace("EXIT_CODE", EXIT_CODE_ANNOTATION).replace("RESULT", RESULT_ANNOTATION).replace("REASON", REASON_ANNOTATION)
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
{{ $reason := "Error" }}
""" + _POD_TERMINATED

# What a kubelet reports for an image it cannot pull: the Pod stays Pending, its containers waiting.
_POD_IMAGE_PULL_FAILED = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  reason: ContainersNotReady
  status: "False"
  type: Ready
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    waiting:
      reason: ErrImagePull
      message: {{ printf "failed to pull and unpack image %q: not found" .image | Quote }}
{{ end }}
phase: Pending
"""

_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'
_NOT_DELETED = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_IMAGES = ".spec.containers.[].image"


def build_stages() -> list[dict]:
    """The Stages kwok loads with `--config`: node-initialize, node-heartbeat, pod-ready, pod-complete, pod-kill,
    pod-delete, pod-image-pull-failed."""
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
                {"key": _IMAGES, "operator": "NotIn", "values": [MISSING_IMAGE]},
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
        _stage(
            "pod-image-pull-failed",
            "Pod",
            [
                _NOT_DELETED,
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": _IMAGES, "operator": "In", "values": [MISSING_IMAGE]},
                {"key": ".status.containerStatuses.[].state.waiting.reason", "operator": "NotIn",
                 "values": ["ErrImagePull"]},
            ],
            {"statusTemplate": _POD_IMAGE_PULL_FAILED},
        ),
    ]


def _stage(name: str, kind: str, match: list[dict], next_: dict, delay: dict | None = None) -> dict:
    spec: dict = {"resourceRef": {"apiGroup": "v1", "kind": kind}, "selector": {"matchExpressions": match}}
    if delay:
        spec["delay"] = delay
    spec["next"] = next_
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}
