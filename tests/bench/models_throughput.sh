#!/usr/bin/env bash
# Benchmark (not a test), issue 15: what choosing the grocery head costs a partner over HTTP.
# Fresh release servers (SQLite, local folder, every role), PLATESCORE_DEFAULT_MODEL
# alternating food-scorer and grocery-scorer; ../shared/tools/loadgen.py, closed loop, c=32,
# distinct uploads of ../shared/images/food, webhooks received. Prints completed jobs/s per
# run and the grocery/ImageNet ratio per round.
#   Env: BENCH_ROUNDS (3), BENCH_JOBS (600), LOADGEN, BENCH_IMAGES.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/platescore
loadgen=${LOADGEN:-../shared/tools/loadgen.py}
images=${BENCH_IMAGES:-../shared/images/food}
rounds=${BENCH_ROUNDS:-3}
jobs=${BENCH_JOBS:-600}
[ -x "$bin" ] || cargo build --release
work=$(mktemp -d /tmp/platescore-models.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
unset DATABASE_URL PLATESCORE_OBJECT_STORE PLATESCORE_MODEL_PRECISION
export RUST_LOG=warn

# Completed jobs/s with this default model, on a fresh server.
completed_per_s() {
  local model=$1 port key
  port=$(free_port)
  rm -rf "$work/data"
  export PLATESCORE_DEFAULT_MODEL=$model PLATESCORE_DATA_DIR="$work/data"
  key=$("$bin" partners create bench 2>/dev/null)
  PLATESCORE_LISTEN="127.0.0.1:$port" PLATESCORE_OUTBOUND_ALLOW_CIDRS=127.0.0.0/8 \
    "$bin" serve 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  python3 "$loadgen" --base "http://127.0.0.1:$port" --header "Authorization: Bearer $key" \
    --images "$images" --unique --warmup 32 --n "$jobs" --concurrency 32 \
    --webhook-port "$(free_port)" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["completed_per_s"])'
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
}

for round in $(seq "$rounds"); do
  imagenet=$(completed_per_s food-scorer)
  grocery=$(completed_per_s grocery-scorer)
  python3 -c "import sys; i, g = map(float, sys.argv[1:]); print(f'round $round: food-scorer {i:.1f}, grocery-scorer {g:.1f} jobs/s, ratio {g / i:.2f}')" "$imagenet" "$grocery"
done
