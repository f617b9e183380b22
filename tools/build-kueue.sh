#!/usr/bin/env bash
# Builds Kueue's controller manager from its Go module into a cache outside the repository, next to the manifests
# of the same release from the module source: the CRDs (config/components/crd/bases) and the webhook configurations
# (config/components/webhook/manifests.yaml). A second run builds nothing. Prints the cache directory.
set -euo pipefail

KUEUE_VERSION=v0.17.0

here=$(cd "$(dirname "$0")" && pwd)
cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
out=${GPTOPS_KUEUE_DIR:-$cache/kueue/$KUEUE_VERSION}

if [ -x "$out/kueue" ] && [ -d "$out/crds" ] && [ -f "$out/webhook/manifests.yaml" ]; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain (go >= 1.26) is needed to build Kueue; install it from https://go.dev/dl/ or set GPTOPS_SKIP_KUEUE=1 to skip the Kueue tests" >&2
  exit 2
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$out"
cd "$here/kueue"
if [ ! -x "$out/kueue" ]; then
  start=$(date +%s)
  echo "building kueue $KUEUE_VERSION into $out (cold: about 80 minutes on 2 cores shared with other builds, seconds once cached)" >&2
  go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    -o "$out/kueue.tmp" sigs.k8s.io/kueue/cmd/kueue
  mv "$out/kueue.tmp" "$out/kueue"
  echo "built in $(( $(date +%s) - start ))s" >&2
fi
src=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
rm -rf "$out/manifests.tmp" && mkdir -p "$out/manifests.tmp/crds" "$out/manifests.tmp/webhook"
cp "$src"/config/components/crd/bases/*.yaml "$out/manifests.tmp/crds/"
cp "$src"/config/components/webhook/manifests.yaml "$out/manifests.tmp/webhook/"
chmod -R u+w "$out/manifests.tmp"
rm -rf "$out/crds" "$out/webhook"
mv "$out/manifests.tmp/crds" "$out/manifests.tmp/webhook" "$out/" && rmdir "$out/manifests.tmp"
echo "$out"
