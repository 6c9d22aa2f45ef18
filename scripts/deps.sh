#!/bin/sh
# Install the Debian 12 packages that building, the demo and the test suite
# need, but only when something is missing (so it is fast on a ready machine).
# Run as root (or with sudo available). Extra package names given as
# arguments are installed too (bench/deps.sh adds the peers).
set -eu

PKGS="gcc make cmake pkg-config clang libevent-dev libssl-dev libnghttp2-dev libyaml-dev libcmocka-dev
      python3 python3-pytest python3-h2 python3-yaml python3-prometheus-client prometheus shellcheck curl openssl
      nghttp2-client nghttp2-server procps $*"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "cutover: installing missing packages:$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
