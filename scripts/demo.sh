#!/bin/sh
# The demo: two mock clouds (aws on 127.0.0.1:9001, azure on 127.0.0.1:9002)
# and cutover on 127.0.0.1:8080 splitting 90/10 with a sticky cookie.
# Ctrl-C stops everything this script started.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh >/dev/null

export CUTOVER_OVERRIDE_SECRET=${CUTOVER_OVERRIDE_SECRET:-demo-secret-change-me}
# A self-signed certificate for the TLS listener, made now, removed on exit.
CUTOVER_DEMO_TLS_DIR=$(mktemp -d /tmp/cutover-demo-tls.XXXXXX)
export CUTOVER_DEMO_TLS_DIR
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$CUTOVER_DEMO_TLS_DIR/demo.key" -out "$CUTOVER_DEMO_TLS_DIR/demo.crt" >/dev/null 2>&1
pids=""
cleanup() {
    trap - INT TERM EXIT
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$CUTOVER_DEMO_TLS_DIR"
    echo "demo stopped"
}
trap cleanup INT TERM EXIT

./build/mock-upstream --listen 127.0.0.1:9001 --name aws >/dev/null & pids="$pids $!"
./build/mock-upstream --listen 127.0.0.1:9002 --name azure >/dev/null & pids="$pids $!"; azure_pid=$!
./build/cutover -c config/examples/demo.yaml >/tmp/cutover-demo-access.log & pids="$pids $!"

# Wait (bounded) until the proxy answers.
i=0
until curl -s -o /dev/null http://127.0.0.1:8080/ 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "cutover did not start" >&2; exit 1; }
    sleep 0.1
done
TOKEN=$(./build/cutover token azure)
cat <<MSG

cutover demo is running: proxy http://127.0.0.1:8080 and https://127.0.0.1:8443
(aws 90 % / azure 10 %, sticky cookie; admin on http://127.0.0.1:9901)
Access log (JSON lines): /tmp/cutover-demo-access.log

Try:
  # 20 requests without a cookie: about 2 in 20 go to azure
  for i in \$(seq 20); do curl -s http://127.0.0.1:8080/; done | sort | uniq -c

  # sticky: keep the cookie, stay on one side
  curl -s -c /tmp/jar -b /tmp/jar http://127.0.0.1:8080/ ; curl -s -c /tmp/jar -b /tmp/jar http://127.0.0.1:8080/

  # force azure with a signed override (token from: cutover token azure)
  curl -s -H 'x-cutover-cluster: $TOKEN' http://127.0.0.1:8080/

  # an unsigned override is ignored (and counted)
  curl -s -H 'x-cutover-cluster: azure' http://127.0.0.1:8080/

  # TLS with HTTP/2 (self-signed certificate made for this demo)
  curl -s --http2 --cacert $CUTOVER_DEMO_TLS_DIR/demo.crt https://localhost:8443/ -w ' (HTTP/%{http_version})\n'
  # HTTP/2 without TLS (prior knowledge)
  curl -s --http2-prior-knowledge http://127.0.0.1:8080/

  # failover: stop the azure stand-in; within a few seconds every request is
  # served by aws (decision "failover" in the access log), none fails
  kill -STOP $azure_pid; sleep 8; for i in \$(seq 20); do curl -s http://127.0.0.1:8080/; done | sort | uniq -c
  curl -s http://127.0.0.1:9901/status | grep -o '"usable":[a-z]*' ; kill -CONT $azure_pid

  # what the proxy sees
  curl -s http://127.0.0.1:9901/metrics | grep -E 'cutover_(requests|decisions|override)'
  curl -s http://127.0.0.1:9901/status

Ctrl-C stops the demo.
MSG
wait
