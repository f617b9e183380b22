#!/usr/bin/env bash
# Builds prometheus and promtool from the Go module into the cache beside the control plane. A second run
# builds nothing. The module's go.mod has no replace directives, so `go install pkg@version` works as is.
# The web UI's assets are not embedded (no `builtinassets` tag) and no service discovery but static targets and files
# is built in (`remove_all_sd`, Prometheus' own tag: without the cloud SDKs the build takes a fraction of the time):
# the tests scrape 127.0.0.1 targets and use the HTTP API only.
set -euo pipefail

PROMETHEUS_MODULE_VERSION=v0.316.0  # Prometheus 3.16.0 (the module's VERSION file)
PROMETHEUS_VERSION=3.16.0

cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
bin=${GPTOPS_PROMETHEUS_BIN:-$cache/prometheus/v$PROMETHEUS_VERSION}

if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain (go >= 1.26) is needed to build prometheus and promtool; install it from https://go.dev/dl/ or set GPTOPS_SKIP_CLUSTER=1 to skip the tests that use them" >&2
  exit 2
fi

export GOTOOLCHAIN=local CGO_ENABLED=0
rm -rf "$bin.tmp" && mkdir -p "$bin.tmp"
start=$(date +%s)
pkg=github.com/prometheus/prometheus
ver=github.com/prometheus/common/version
echo "building prometheus and promtool $PROMETHEUS_VERSION into $bin" >&2
GOBIN="$bin.tmp" GOFLAGS= go install -trimpath -tags remove_all_sd \
  -ldflags "-s -w -X $ver.Version=$PROMETHEUS_VERSION -X $ver.Branch=HEAD -X $ver.Revision=$PROMETHEUS_MODULE_VERSION" \
  "$pkg/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" "$pkg/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
