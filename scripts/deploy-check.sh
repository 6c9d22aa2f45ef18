#!/bin/sh
# Validate deploy/ offline: the kustomization renders (and matches real
# kustomize where kubectl is installed), the manifests agree with each other,
# with the Dockerfile and with the config; the ConfigMap's cutover.yaml passes
# `cutover --check`; the Dockerfile and the systemd unit are linted. These are
# the checks of tests/e2e/test_deploy.py, which the test suite also runs.
#
#   scripts/deploy-check.sh            validate (builds build/cutover if missing)
#   scripts/deploy-check.sh --render   print the manifests `kubectl apply -k deploy/kubernetes` would send
set -eu
cd "$(dirname "$0")/.."

case "${1:-}" in
--render)
    if command -v kubectl >/dev/null 2>&1; then
        exec kubectl kustomize deploy/kubernetes
    fi
    exec python3 tests/e2e/test_deploy.py --render
    ;;
"") ;;
*)
    echo "usage: $0 [--render]" >&2
    exit 2
    ;;
esac

./scripts/deps.sh
CUTOVER_BIN=${CUTOVER_BIN:-$(pwd)/build/cutover}
if [ ! -x "$CUTOVER_BIN" ]; then
    ./scripts/build.sh >/dev/null
fi
export CUTOVER_BIN
PYTEST=$(command -v pytest-3 || command -v pytest)
exec "$PYTEST" -q -p no:cacheprovider -rsw tests/e2e/test_deploy.py
