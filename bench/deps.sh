#!/bin/sh
# Install what the load benchmark needs (Debian 12), only when something is
# missing: the build and test deps (scripts/deps.sh) plus the three peers
# (nghttpx, HAProxy, nginx) and gnuplot for the plot.
# Run as root (or with sudo available).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh nghttp2-proxy haproxy nginx gnuplot-nox

# The packages enable system services; the benchmark starts its own
# instances on free loopback ports, so stop the stock ones (they would
# otherwise hold port 80 and use CPU during the runs).
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
for svc in nginx haproxy nghttpx; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" 2>/dev/null || true
    fi
done
exit 0
