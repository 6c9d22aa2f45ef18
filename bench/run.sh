#!/usr/bin/env bash
# The load benchmark, in one command:
#
#   bench/run.sh [--quick] [--rounds N] [--duration S] [--reload N] [--reload-only]
#                [--idle-conns N] [--split-requests N] [--proxies LIST] [--scenarios LIST]
#                [--rev GITREV] [--no-deps]
#
# Installs what is missing (bench/deps.sh), builds cutover in release mode
# (build-release/, or build-release-<sha>/ for --rev), then bench/bench.py
# starts the mocks, cutover, nghttpx, HAProxy and nginx on free loopback
# ports, drives them with h2load and prints the table. Results go to
# bench/results/<date>/. Everything started is stopped on exit (by PID).
#
#   --rev GITREV   benchmark a committed revision instead of the working tree:
#                  `git archive GITREV` is built in build-release-<sha>/ (the
#                  working tree is not touched; handy for before/after).
#   --no-deps      skip bench/deps.sh (no package check).
# The other options go to bench/bench.py; `bench/run.sh --help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}

rev="" deps=1 pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rev) [ $# -ge 2 ] || { echo "--rev needs a git revision" >&2; exit 2; }; rev=$2; shift 2 ;;
        --rev=*) rev=${1#--rev=}; shift ;;
        --no-deps) deps=0; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; echo; "$PY" bench/bench.py --help; exit 0 ;;
        *) pass+=("$1"); shift ;;
    esac
done
"$PY" bench/bench.py --check-args "${pass[@]+"${pass[@]}"}"

[ "$deps" = 1 ] && ./bench/deps.sh

stamp=$(date +%Y-%m-%d_%H%M%S)
out="$ROOT/bench/results/$stamp"
mkdir -p "$out"

# Release build, without -Werror: gcc's -O2/-O3 flow analysis reports
# -Wmaybe-uninitialized in config/config.c that the debug build does not;
# the warnings are listed here and in build.log instead of failing the run.
if [ -n "$rev" ]; then
    sha=$(git rev-parse --verify "$rev^{commit}")
    short=${sha:0:12}
    bdir="$ROOT/build-release-$short"
    if [ ! -f "$bdir/src/CMakeLists.txt" ]; then
        rm -rf "$bdir/src"
        mkdir -p "$bdir/src"
        git archive "$sha" | tar -x -C "$bdir/src"
    fi
    src="$bdir/src" build="$bdir/build" source="git $sha ($rev)"
else
    src="$ROOT" build="$ROOT/build-release"
    head=$(git rev-parse --short=12 HEAD 2>/dev/null || echo "?")
    dirty=$(git status --porcelain --untracked-files=no -- proxy config tls CMakeLists.txt 2>/dev/null | wc -l)
    source="working tree at $head"
    if [ "$dirty" -gt 0 ]; then source="$source + $dirty modified source file(s)"; fi
fi
echo "building cutover (Release) from $source into $build"
if ! { cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCUTOVER_TESTS=OFF -DCUTOVER_WERROR=OFF \
        && cmake --build "$build" -j"$(nproc)" --target cutover mock-upstream; } >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log" >&2
    echo "build failed (log: $out/build.log)" >&2
    exit 1
fi
nwarn=$(grep -c 'warning:' "$out/build.log" || true)
if [ "$nwarn" -gt 0 ]; then
    echo "release build: $nwarn compiler warning(s) (files recompiled this time only):"
    grep 'warning:' "$out/build.log" | sed "s|$src/||" | sort -u | sed 's/^/  /'
fi

# 2,000 idle connections and more: raise the descriptor limit as far as allowed
# (the proxies inherit it).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cmd="bench/run.sh${rev:+ --rev $rev}${pass[*]+ ${pass[*]}}"
"$PY" bench/bench.py --bin "$build" --out "$out" --command "$cmd" --source "$source" \
    "${pass[@]+"${pass[@]}"}" &
pid=$!
# shellcheck disable=SC2317  # called from the trap
stop() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
trap 'stop; exit 130' INT TERM HUP
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT
rc=0
wait "$pid" || rc=$?
trap - EXIT
exit "$rc"
