#!/bin/sh
# Instructions per proxied request, measured with callgrind (stable on a
# shared machine, unlike time): run the proxy under valgrind twice, with N1
# and N2 requests, and divide the difference by N2 - N1 (start-up cancels).
#
#   bench/callgrind.sh [h1|h2] [BINARY]     default: h1, build-rel/cutover
#
# Uses the mocks from the same build dir, 1 KiB responses, h2load -c 8
# (h2: -m 10, cleartext prior knowledge), one worker, loopback ports 18090,
# 19011, 19012 (change below if taken).
set -eu
MODE=${1:-h1}
BIN=${2:-build-rel/cutover}
MOCK=$(dirname "$BIN")/mock-upstream
N1=2000
N2=12000
cd "$(dirname "$0")/.."
TMP=$(mktemp -d /tmp/cutover-cg.XXXXXX)
cat > "$TMP/cfg.yaml" <<CFG
workers: 1
listen: [ { address: 127.0.0.1:18090 } ]
clusters:
  - { name: aws, endpoints: [127.0.0.1:19011] }
  - { name: azure, endpoints: [127.0.0.1:19012] }
routes:
  - name: all
    match: { path_prefix: / }
    split: [ { cluster: azure, weight: 10 }, { cluster: aws, weight: 90 } ]
CFG
run() {
    "$MOCK" --listen 127.0.0.1:19011 --name aws >/dev/null & m1=$!
    "$MOCK" --listen 127.0.0.1:19012 --name azure >/dev/null & m2=$!
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$1" "$BIN" -c "$TMP/cfg.yaml" >/dev/null 2>"$TMP/err" & p=$!
    i=0
    until curl -s -o /dev/null http://127.0.0.1:18090/; do
        i=$((i + 1)); [ $i -gt 200 ] && { echo "proxy did not start" >&2; exit 1; }
        sleep 0.1
    done
    if [ "$MODE" = h1 ]; then
        h2load --h1 -n "$1" -c 8 http://127.0.0.1:18090/bytes/1024 >/dev/null 2>&1
    else
        h2load -n "$1" -c 8 -m 10 http://127.0.0.1:18090/bytes/1024 >/dev/null 2>&1
    fi
    kill "$p"; wait "$p" 2>/dev/null || true
    kill "$m1" "$m2"; wait "$m1" "$m2" 2>/dev/null || true
    grep '^summary' "$TMP/cg.$1" | awk '{print $2}'
}
a=$(run $N1)
b=$(run $N2)
echo "$MODE: $(( (b - a) / (N2 - N1) )) instructions per request ($BIN)"
rm -rf "$TMP"
