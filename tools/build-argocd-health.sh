#!/usr/bin/env bash
# Builds tools/argocd-health (Argo CD's own health engine, github.com/argoproj/argo-cd/v3/util/lua, around the
# chart's Lua) into the cache beside the control plane. A second run builds nothing. `--path` prints where the binary
# is (or would be) and builds nothing. Prints the binary's path.
set -euo pipefail

ARGOCD_VERSION=v3.2.0  # keep equal to tools/argocd-health/go.mod

here=$(cd "$(dirname "$0")" && pwd)
cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
stamp=$(cat "$here/argocd-health/go.mod" "$here/argocd-health/go.sum" "$here/argocd-health/main.go" | sha256sum | cut -c1-12)
bin=$cache/argocd-health/$ARGOCD_VERSION-$stamp/argocd-health

if [ "${1:-}" = --path ] || [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain is needed to build Argo CD's health engine; install it from https://go.dev/dl/" >&2
  exit 2
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$(dirname "$bin")"
start=$(date +%s)
echo "building argocd-health (Argo CD $ARGOCD_VERSION util/lua) into $bin" >&2
(cd "$here/argocd-health" && go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
echo "built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
