#!/usr/bin/env bash
# Benchmark (not a test), issue 14: what a partner sees over HTTP, against the raw capacity
# of preprocessing + inference measured in the same sitting. Release build, SQLite, local
# folder, every role on one node; ../shared/tools/loadgen.py drives it with distinct uploads
# of ../shared/images/food and receives the webhooks, on the same cores.
#   tests/bench/throughput.sh [RESULTS_DIR]        # default /tmp/platescore-throughput
#   python3 tests/bench/plot_throughput.py RESULTS_DIR/results.jsonl docs/   # the SVG plots
# Env: BENCH_ROUNDS (3), BENCH_JOBS (1220), BENCH_SWEEP ("1 4 8 16 32 64"), LOADGEN, BENCH_IMAGES.
# Each round measures, on fresh servers:
#   R32:       `bench pipeline --http` with the FP32 model (the default): its "alone" line
#   R8:        the same with the INT8 file (PLATESCORE_MODEL_PRECISION=int8)
#   E:         loadgen, closed loop, c=32, against the default server; RSS after the run
#   E8:        the same against a server running the INT8 file
# then once, on the default server: latency at half of median(E), open loop; completed
# jobs/s against client concurrency.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/platescore
loadgen=${LOADGEN:-../shared/tools/loadgen.py}
images=${BENCH_IMAGES:-../shared/images/food}
rounds=${BENCH_ROUNDS:-3}
jobs=${BENCH_JOBS:-1220}
sweep=${BENCH_SWEEP:-1 4 8 16 32 64}
out=${1:-/tmp/platescore-throughput}
[ -x "$bin" ] || cargo build --release
mkdir -p "$out"
results=$out/results.jsonl
: >"$results"

work=$(mktemp -d /tmp/platescore-bench.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
unset DATABASE_URL PLATESCORE_OBJECT_STORE PLATESCORE_MODEL_PRECISION
export RUST_LOG=warn

# A fresh server (data folder, port) with the environment given; sets port, key, server_pid.
serve() {
  port=$(free_port)
  rm -rf "$work/data"
  key=$(env "$@" PLATESCORE_DATA_DIR="$work/data" "$bin" partners create bench 2>/dev/null)
  env "$@" PLATESCORE_DATA_DIR="$work/data" PLATESCORE_LISTEN="127.0.0.1:$port" \
    PLATESCORE_OUTBOUND_ALLOW_CIDRS=127.0.0.0/8 "$bin" serve 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server did not become ready" >&2; cat "$work/server.log" >&2; exit 1
}

stop() {
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
}

rss_mb() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$server_pid/status"; }
hwm_mb() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$server_pid/status"; }

# One loadgen run against a fresh server: `loadgen KIND ROUND "ENV…" loadgen-args…`.
loadgen() {
  local kind=$1 round=$2 environment=$3
  shift 3
  # shellcheck disable=SC2086
  serve $environment
  python3 tests/bench/loadgen_raw.py "$work/raw.json" "$loadgen" --base "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $key" --images "$images" --unique --warmup 32 \
    --webhook-port "$(free_port)" --label "$kind" "$@" 2>"$work/loadgen.err" >"$work/out.json" ||
    { cat "$work/loadgen.err" >&2; exit 1; }
  local rss hwm
  rss=$(rss_mb)
  hwm=$(hwm_mb)
  stop
  python3 - "$kind" "$round" "$rss" "$hwm" "$work/out.json" "$work/raw.json" >>"$results" <<'PY'
import json, sys
kind, round_, rss, hwm, out, raw = sys.argv[1:]
o = json.load(open(out))
row = {"kind": kind, "round": int(round_), "rss_after_mb": int(rss), "rss_peak_mb": int(hwm),
       "completed_per_s": o["completed_per_s"], "enqueue_per_s": o["enqueue_per_s"],
       "concurrency": o["concurrency"], "rate": o["rate"], "n": o["n"],
       "e2e_ms": o["e2e_latency_ms"], "enqueue_ms": o["enqueue_latency_ms"],
       "loadgen_cpu_s": o["loadgen_cpu_s"], "lost": o["sent"] - o["delivered"],
       "duplicates": o["duplicates"]}
if o["rate"]:
    row["e2e_raw_ms"] = json.load(open(raw))["e2e_ms"]
print(json.dumps(row))
PY
  tail -n 1 "$results" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("%-16s round %s c=%s rate=%s: completed %s jobs/s, e2e p50 %.0f ms p99 %.0f ms, RSS after %s MB (peak %s MB)"
      % (r["kind"], r["round"], r["concurrency"], r["rate"], r["completed_per_s"],
         r["e2e_ms"]["p50"], r["e2e_ms"]["p99"], r["rss_after_mb"], r["rss_peak_mb"]))'
}

# `bench pipeline --http`: the in-process capacity and its own over-HTTP run.
capacity() {
  local kind=$1 round=$2 precision=$3
  PLATESCORE_MODEL_PRECISION=$precision "$bin" bench pipeline --http --images "$images" \
    --jobs "$jobs" --concurrency 32 2>/dev/null | tee "$work/bench.txt"
  python3 - "$kind" "$round" "$work/bench.txt" >>"$results" <<'PY'
import json, re, sys
kind, round_, path = sys.argv[1:]
text = open(path).read()
alone = float(re.search(r"alone \([^)]*\): ([0-9.]+) img/s", text).group(1))
http = float(re.search(r"\): ([0-9.]+) jobs/s = ", text).group(1))
print(json.dumps({"kind": kind, "round": int(round_), "alone_img_per_s": alone,
                  "over_http_jobs_per_s": http}))
PY
}

for round in $(seq 1 "$rounds"); do
  capacity capacity-fp32 "$round" fp32
  capacity capacity-int8 "$round" int8
  loadgen saturation "$round" "" --n "$jobs" --concurrency 32
  loadgen saturation-int8 "$round" "PLATESCORE_MODEL_PRECISION=int8" --n "$jobs" --concurrency 32
done

half=$(python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(round(statistics.median(r["completed_per_s"] for r in rows if r["kind"] == "saturation") / 2, 1))
PY
)
loadgen half-load 1 "" --n "$jobs" --concurrency 32 --rate "$half"
for c in $sweep; do
  loadgen sweep 1 "" --n "$jobs" --concurrency "$c"
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(kind, key):
    return statistics.median(r[key] for r in rows if r["kind"] == kind)
def by_round(kind, key):
    return {r["round"]: r[key] for r in rows if r["kind"] == kind}
r32, r8 = by_round("capacity-fp32", "alone_img_per_s"), by_round("capacity-int8", "alone_img_per_s")
e, e8 = by_round("saturation", "completed_per_s"), by_round("saturation-int8", "completed_per_s")
print(f"\nper round: R32 {r32}\n           R8  {r8}\n           E   {e}\n           E8  {e8}")
ratio = lambda a, b: statistics.median(a[k] / b[k] for k in a)
print(f"medians: R32 {med('capacity-fp32', 'alone_img_per_s'):.1f} img/s, R8 {med('capacity-int8', 'alone_img_per_s'):.1f} img/s, "
      f"E {med('saturation', 'completed_per_s'):.1f} jobs/s, E8 {med('saturation-int8', 'completed_per_s'):.1f} jobs/s")
print(f"median of per-round ratios: E/R32 {ratio(e, r32):.2f}, E8/R32 {ratio(e8, r32):.2f}, E8/R8 {ratio(e8, r8):.2f}")
print(f"bench --http over the wire / alone: FP32 {med('capacity-fp32', 'over_http_jobs_per_s') / med('capacity-fp32', 'alone_img_per_s'):.2f}, "
      f"INT8 {med('capacity-int8', 'over_http_jobs_per_s') / med('capacity-int8', 'alone_img_per_s'):.2f}")
for kind in ("saturation", "saturation-int8"):
    print(f"RSS after {kind}: {med(kind, 'rss_after_mb')} MB (peak {med(kind, 'rss_peak_mb')} MB)")
half = [x for x in rows if x["kind"] == "half-load"][0]
print(f"half load {half['rate']}/s: e2e p50 {half['e2e_ms']['p50']:.1f} ms p99 {half['e2e_ms']['p99']:.1f} ms")
print("sweep:", sorted((x["concurrency"], x["completed_per_s"]) for x in rows if x["kind"] == "sweep"))
PY
