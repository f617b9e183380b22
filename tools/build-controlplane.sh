#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
# kwok, helm) from Go modules into a cache outside the repository. A second run builds nothing.
# With --kubelet it also builds the kubelet of the same Kubernetes module (for `dev-cluster up --real-node`).
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.8
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
HELM_K8S_MINOR=37  # the k8s.io/client-go v0.37 that helm v3.22.0 requires

here=$(cd "$(dirname "$0")" && pwd)
cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
bin=${GPTOPS_CONTROLPLANE_BIN:-$cache/controlplane/$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION-helm$HELM_VERSION}

kubelet=0
[ "${1:-}" = --kubelet ] && kubelet=1

want=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm)
missing=0
for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing=1; done
if [ "$missing" = 0 ] && { [ "$kubelet" = 0 ] || [ -x "$bin/kubelet" ]; }; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain (go >= 1.26) is needed to build the local control plane; install it from https://go.dev/dl/ or set GPTOPS_SKIP_CLUSTER=1 to skip the cluster tests" >&2
  exit 2
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
ver="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=36 -s -w"

# The kubelet goes in beside the others (atomically, the rest of the directory untouched) so that adding it to a
# cache built without it rebuilds nothing else; the Go build cache makes it a few minutes after the others.
build_kubelet() {
  echo "building kubelet $K8S_VERSION into $bin" >&2
  (cd "$here/controlplane" && go build -trimpath -ldflags "$ver" -o "$bin/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet)
  mv "$bin/kubelet.tmp" "$bin/kubelet"
}
if [ "$missing" = 0 ]; then
  build_kubelet
  echo "built in $(( $(date +%s) - start ))s" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$bin.tmp"
(
  cd "$here/controlplane"
  echo "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION into $bin (cold: about 22 minutes on 2 cores)" >&2
  go build -trimpath -ldflags "$ver" -o "$bin.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
  echo "building etcd $ETCD_VERSION" >&2
  go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" go.etcd.io/etcd/server/v3
)
echo "building kwok $KWOK_VERSION and helm $HELM_VERSION" >&2
GOBIN="$bin.tmp" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# Like helm's Makefile: stamp its version and the Kubernetes version `helm template` assumes (else v1.20, which
# fails charts that declare a kubeVersion).
helm_pkg=helm.sh/helm/v3
GOBIN="$bin.tmp" GOFLAGS= go install -trimpath -ldflags "-s -w -X $helm_pkg/internal/version.version=$HELM_VERSION \
  -X $helm_pkg/pkg/chartutil.k8sVersionMajor=1 -X $helm_pkg/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR \
  -X $helm_pkg/pkg/lint/rules.k8sVersionMajor=1 -X $helm_pkg/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR" \
  "$helm_pkg/cmd/helm@$HELM_VERSION"
rm -rf "$bin" && mv "$bin.tmp" "$bin"
[ "$kubelet" = 0 ] || build_kubelet
echo "built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
