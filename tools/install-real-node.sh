#!/usr/bin/env bash
# Installs what `gptops dev-cluster up --real-node` needs from Debian, when missing: containerd (with runc), the CNI
# plugins, a static busybox (the test image) and gcc with a static libc (pause.c). Needs root and apt; retries while
# another apt holds the dpkg lock. A second run installs nothing.
set -euo pipefail

need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
[ ${#need[@]} = 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the real node needs the Debian packages ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
  exit 2
fi
echo "installing ${need[*]}" >&2
# A fresh machine may have no package lists yet.
apt-cache show "${need[@]}" >/dev/null 2>&1 || apt-get update >&2 || true
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  if DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; then exit 0; fi
  [ "$attempt" = 10 ] || { echo "apt-get failed (attempt $attempt; the dpkg lock may be held); retrying" >&2; sleep 15; }
done
exit 1
