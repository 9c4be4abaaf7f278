#!/usr/bin/env bash
# What each model costs a node: the RSS of `platescore serve` (all roles, defaults) once it
# is ready (its models loaded and warmed up at batch 1 and their largest batch), alternating
# a models folder holding only food-scorer; food-scorer and grocery-scorer (the second
# loads on its first job, so not yet); and both with PLATESCORE_PRELOAD_MODELS=true.
#   BENCH_BIN (default target/release/platescore), BENCH_ROUNDS (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BENCH_BIN:-target/release/platescore}"
rounds="${BENCH_ROUNDS:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/one" "$work/two"
ln -s "$PWD/models/food-scorer" "$work/one/food-scorer"
ln -s "$PWD/models/food-scorer" "$work/two/food-scorer"
ln -s "$PWD/models/grocery-scorer" "$work/two/grocery-scorer"

rss_when_ready() {
  local models="$1" preload="$2" data="$work/data-$RANDOM"
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  PLATESCORE_PRELOAD_MODELS="$preload" PLATESCORE_MODELS_DIR="$models" PLATESCORE_DATA_DIR="$data" PLATESCORE_LISTEN="127.0.0.1:$port" \
    RUST_LOG=warn "$bin" serve >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break
    sleep 0.1
  done
  sleep 1
  awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  one="$(rss_when_ready "$work/one" false)"
  lazy="$(rss_when_ready "$work/two" false)"
  both="$(rss_when_ready "$work/two" true)"
  echo "round $round: food-scorer alone ${one} MB; with grocery-scorer not loaded yet ${lazy} MB, preloaded ${both} MB (+$((both - one)) MB)"
done
