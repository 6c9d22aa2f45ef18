#!/bin/sh
# Install what the load benchmark needs (Debian 12), only when something is
# missing: the build deps (scripts/deps.sh), h2load, the three peers
# (nghttpx, HAProxy, nginx), gnuplot for the plot, curl for the split check.
# Run as root (or with sudo available).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh

PKGS="nghttp2-client nghttp2-proxy haproxy nginx gnuplot-nox curl openssl python3 procps"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "bench: installing missing packages:$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
# The packages enable system services; the benchmark starts its own
# instances on free loopback ports, so stop the stock ones (they would
# otherwise hold port 80 and use CPU during the runs).
for svc in nginx haproxy nghttpx; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" 2>/dev/null || true
    fi
done
exit 0
