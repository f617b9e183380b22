#!/usr/bin/env bash
# Builds the project's images without a registry: a Debian base made with debootstrap and imported into docker
# (cached as a tarball, rebuilt only when its recipe changes), then gptops/trainer and gptops/operator from
# images/*/Dockerfile on top of it. Installs docker.io and debootstrap with apt-get and starts dockerd when missing.
# A second run rebuilds nothing that did not change (docker's layer cache; pip's cache is a BuildKit cache mount).
# Prints the three image references. Run from anywhere; GPTOPS_SKIP_IMAGES=1 makes `make images` skip it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
images_cache=$cache/images/v1
mkdir -p "$images_cache"

SUITE=bookworm
MIRROR=${GPTOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")

log() { echo "build-images: $*" >&2; }

# --- docker -------------------------------------------------------------------------------------------------
# Debian's client (20.10) has BuildKit built in; a newer client (like a static one in /usr/local/bin) needs the buildx
# plugin for BuildKit, so Debian's is preferred when both are there.
ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "error: ${missing[*]} missing and not root; install them (apt-get install ${missing[*]}) or set GPTOPS_SKIP_IMAGES=1"
    exit 2
  fi
  log "installing ${missing[*]} with apt-get"
  local try
  for try in 1 2 3 4 5 6; do  # another apt-get may hold the dpkg lock for a while
    if DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then return 0; fi
    [ "$try" = 1 ] && apt-get update >&2 || true
    sleep 10
  done
  log "error: apt-get install ${missing[*]} failed"
  exit 2
}

ensure_dockerd() {
  if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
  # dockerd runs its own containerd (under /var/run/docker/containerd), apart from any other containerd on the host.
  log "starting dockerd (overlay2, log in $images_cache/dockerd.log)"
  setsid dockerd --storage-driver=overlay2 >"$images_cache/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 60); do
    if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "error: dockerd did not answer within 60 s; see $images_cache/dockerd.log"
  exit 2
}

ensure_packages
DOCKER=${DOCKER:-}
if [ -z "$DOCKER" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
ensure_dockerd
export DOCKER_BUILDKIT=1

# --- base image ---------------------------------------------------------------------------------------------
# The recipe: the suite, the mirror, the package list, the host's CA certificates and the steps below. Its hash names
# the tarball and the image tag, so changing any of them makes a new base and nothing else does.
ca_files=()
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then ca_files=(/usr/local/share/ca-certificates/*); fi
recipe=$( {
  echo "debootstrap --variant=minbase --include=$PACKAGES $SUITE $MIRROR"
  echo "recipe 1: apt lists and caches removed, update-ca-certificates, docker import"
  for f in "${ca_files[@]}"; do echo "$(basename "$f")"; cat "$f"; done
} | sha256sum | cut -c1-12)
base=gptops/base:$recipe
tarball=$images_cache/base-$recipe.tar

if ! "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
  if [ ! -f "$tarball" ]; then
    start=$(date +%s)
    rootfs=$images_cache/rootfs-$recipe
    rm -rf "$rootfs"
    log "debootstrap $SUITE into $rootfs (log in $images_cache/debootstrap.log)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$images_cache/debootstrap.log" 2>&1 \
      || { tail -n 40 "$images_cache/debootstrap.log" >&2; log "error: debootstrap failed"; exit 1; }
    # pip inside the build verifies TLS with these (a proxy's CA, for one).
    for f in "${ca_files[@]}"; do cp "$f" "$rootfs/usr/local/share/ca-certificates/"; done
    chroot "$rootfs" update-ca-certificates >&2
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    log "base rootfs in $(( $(date +%s) - start ))s: $tarball"
  fi
  "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base" <"$tarball" >/dev/null
fi

# --- the project's images -----------------------------------------------------------------------------------
build() {  # name
  local name=$1 start
  start=$(date +%s)
  log "building gptops/$name:$VERSION (log in $images_cache/$name.log)"
  # Tagged under the name the builders default to as well (api/constants.py), so a local cluster finds it.
  if ! "$DOCKER" build --progress=plain --build-arg "PYTHON_IMAGE=$base" -f "$root/images/$name/Dockerfile" \
      -t "gptops/$name:$VERSION" -t "ghcr.io/gptops/$name:$VERSION" "$root" >"$images_cache/$name.log" 2>&1; then
    tail -n 60 "$images_cache/$name.log" >&2
    log "error: docker build of images/$name/Dockerfile failed"
    exit 1
  fi
  log "gptops/$name:$VERSION in $(( $(date +%s) - start ))s, $("$DOCKER" image inspect -f '{{.Size}}' "gptops/$name:$VERSION" | awk '{printf "%.0f MB", $1/1e6}')"
}
build operator
build trainer
# The images these replaced are left untagged, and each trainer build leaves its 6 GB of layers in the build cache:
# without this every code change would keep another copy. The trim takes the layers used least recently (an older deps
# stage, a Dockerfile or constraints change ago) until the cache is back to GPTOPS_BUILD_CACHE, and never the cache
# mounts: the trainer's wheels (3 GB) were last used when its deps stage was built, so a trim by age alone took them.
"$DOCKER" image prune -f >/dev/null
"$DOCKER" builder prune -f --filter type=regular --keep-storage "${GPTOPS_BUILD_CACHE:-12GB}" >/dev/null

echo "$base"
echo "gptops/operator:$VERSION"
echo "gptops/trainer:$VERSION"
