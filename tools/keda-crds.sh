#!/usr/bin/env bash
# KEDA's ScaledObject CRD, taken from KEDA's Go module source (github.com/kedacore/keda/v2, the file
# config/crd/bases/keda.sh_scaledobjects.yaml) through the Go module proxy, into the cache beside the control plane.
# Nothing else is downloaded and nothing is built. A second run does nothing. Prints the cache directory.
set -euo pipefail

KEDA_VERSION=v2.21.0

cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
out=$cache/keda/$KEDA_VERSION
crd=keda.sh_scaledobjects.yaml

if [ -f "$out/$crd" ]; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain is needed to fetch KEDA's CRDs from the Go module proxy; install it from https://go.dev/dl/ or set GPTOPS_SKIP_CLUSTER=1" >&2
  exit 2
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
modcache=$(mktemp -d)
trap 'chmod -R u+w "$modcache" && rm -rf "$modcache"' EXIT
dir=$(GOMODCACHE=$modcache go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cp "$dir/config/crd/bases/$crd" "$out.tmp/$crd"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
