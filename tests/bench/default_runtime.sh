#!/usr/bin/env bash
# Benchmark (not a test): what `cargo run --release` gives a user, over HTTP. The release
# build with its defaults (ONNX Runtime bundled, on the CPU) against the same build forced
# onto tract (what a fresh clone served before the bundling), alternated in one sitting,
# driven by ../shared/tools/loadgen.py with distinct uploads and webhooks on loopback.
#   tests/bench/default_runtime.sh            # 3 rounds; BENCH_ROUNDS, BENCH_JOBS to change
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/platescore
loadgen=${LOADGEN:-../shared/tools/loadgen.py}
images=${BENCH_IMAGES:-../shared/images/food}
rounds=${BENCH_ROUNDS:-3}
jobs=${BENCH_JOBS:-600}
[ -x "$bin" ] || cargo build --release

work=$(mktemp -d /tmp/platescore-bench.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One run: a fresh server (data folder, port) on `runtime`, loadgen closed loop at c=32.
run() {
  local runtime=$1 round=$2 port hook
  port=$(free_port)
  hook=$(free_port)
  rm -rf "$work/data"
  export PLATESCORE_DATA_DIR="$work/data" PLATESCORE_LISTEN="127.0.0.1:$port"
  export PLATESCORE_OUTBOUND_ALLOW_CIDRS=127.0.0.0/8 PLATESCORE_RUNTIME=$runtime RUST_LOG=warn
  unset DATABASE_URL PLATESCORE_OBJECT_STORE ORT_DYLIB_PATH PLATESCORE_ORT_LIBRARY
  local key
  key=$("$bin" partners create bench 2>/dev/null)
  "$bin" serve 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  local ready
  ready=$(curl -fsS "http://127.0.0.1:$port/health/ready")
  python3 "$loadgen" --base "http://127.0.0.1:$port" --header "Authorization: Bearer $key" \
    --images "$images" --n "$jobs" --concurrency 32 --unique --warmup 32 --webhook-port "$hook" \
    --label "$runtime round $round" 2>/dev/null >"$work/out.json"
  local rss
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$server_pid/status")
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  python3 - "$work/out.json" "$ready" "$rss" <<'PY'
import json, sys
out, ready, rss = json.load(open(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
e2e = out["e2e_latency_ms"]
print(f'{out["label"]:<16} runtime {ready["runtime"]:<8} completed {out["completed_per_s"]:>6} jobs/s  '
      f'enqueue→webhook p50 {e2e["p50"]:.0f} ms p99 {e2e["p99"]:.0f} ms  RSS after {rss} MB')
PY
}

for round in $(seq 1 "$rounds"); do
  run auto "$round"
  run tract "$round"
done
