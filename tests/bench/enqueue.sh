#!/usr/bin/env bash
# Benchmark (not a test): enqueue throughput and latency for ~200 KB JPEG uploads at
# concurrency 32, against a release build on loopback, with wrk (apt-get install wrk).
#   tests/bench/enqueue.sh sqlite              # embedded defaults: SQLite + local folder
#   .ci/with-postgres tests/bench/enqueue.sh postgres
# Env: BENCH_BIN (default target/release/platescore: another build for an A/B), BENCH_DURATION (default 20s), BENCH_CONNECTIONS (32), BENCH_THREADS (1), BENCH_ROLE
# (`api`, the default: enqueue alone, no worker scoring the jobs on the same cores; or `all`).
set -euo pipefail
cd "$(dirname "$0")/../.."
backend=${1:-sqlite}
bin=${BENCH_BIN:-target/release/platescore}
[ -x "$bin" ] || cargo build --release
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/platescore-bench.XXXXXX")
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PLATESCORE_DATA_DIR="$work/data" PLATESCORE_LISTEN="127.0.0.1:$port" RUST_LOG=warn
export PLATESCORE_ROLE=${BENCH_ROLE:-api}
unset PLATESCORE_OBJECT_STORE
case "$backend" in
  sqlite) unset DATABASE_URL ;;
  postgres)
    : "${PLATESCORE_TEST_DATABASE_URL:?run under .ci/with-postgres}"
    export DATABASE_URL="$PLATESCORE_TEST_DATABASE_URL" ;;
  *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
esac

key=$("$bin" partners create bench 2>/dev/null)
"$bin" serve 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done

export BENCH_KEY="$key" BENCH_IMAGE=tests/fixtures/tray_200kb.jpg
conns=${BENCH_CONNECTIONS:-32}
threads=${BENCH_THREADS:-1}
# Warm up, then measure.
wrk -t"$threads" -c"$conns" -d3s -s tests/bench/enqueue.lua "http://127.0.0.1:$port" >/dev/null
echo "backend=$backend connections=$conns image=$(stat -c %s "$BENCH_IMAGE") bytes"
wrk -t"$threads" -c"$conns" -d"${BENCH_DURATION:-20s}" -s tests/bench/enqueue.lua "http://127.0.0.1:$port" | sed -n "${BENCH_WRK_FROM:-/requests\/s:/},\$p"
echo "server peak RSS: $(grep VmHWM /proc/$server_pid/status | awk '{print $2, $3}')"
echo "jobs stored: $(curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$port/jobs?limit=1" >/dev/null && find "$work/data/objects/images" -type f | wc -l) objects"
