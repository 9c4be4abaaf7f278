#!/usr/bin/env bash
# The GPU check: proves ONNX Runtime's TensorRT and CUDA providers on this machine's NVIDIA
# GPU and measures them. Needs the GPU's driver and python3; everything else comes from
# PyPI (deploy/gpu/requirements.txt) into a virtualenv. Exits non-zero on any failure.
#
#   deploy/gpu/check.sh [--images DIR] [--wheelhouse DIR] [--out DIR] [--providers LIST]
#
#   --images DIR      photos to compare the providers on (default ../shared/images)
#   --wheelhouse DIR  install the wheels from DIR, offline (pip --no-index --find-links)
#   --out DIR         venv, TensorRT engine cache, logs and results (default target/gpu-check)
#   --providers LIST  GPU providers to check, comma-separated (default tensorrt,cuda);
#                     `cpu` alone runs the script's machinery on a machine without a GPU
#
# Steps: the venv; the release binary (built if missing); the scorer tests on each provider
# with fallback off; agreement of TensorRT, CUDA and CPU on every photo (same top-1 label,
# scores within 0.05); `bench runtime` at batch 1, 8, 32 and 64 and `bench pipeline`; one
# table of img/s, p50/p99 per batch and peak GPU memory per configuration.
set -euo pipefail
cd "$(dirname "$0")/../.."

images=../shared/images
wheelhouse=
out=target/gpu-check
providers=tensorrt,cuda
bench_seconds=${PLATESCORE_GPU_BENCH_SECONDS:-5}
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --wheelhouse) wheelhouse=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --providers) providers=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a listed <<<"$providers"
gpu_providers=()
for provider in "${listed[@]}"; do
  case $provider in
    tensorrt|cuda) gpu_providers+=("$provider") ;;
    cpu) ;;
    *) echo "check.sh: unknown provider $provider" >&2; exit 2 ;;
  esac
done
started=$(date +%s)
say() { printf '\n=== [%3ds] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() { echo "gpu check FAILED: $*" >&2; exit 1; }

cpu_only=false
[ ${#gpu_providers[@]} -eq 0 ] && cpu_only=true
if ! $cpu_only; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu check: no NVIDIA GPU with a working driver here (nvidia-smi is missing or" \
      "fails); this script needs one. (--providers cpu runs its machinery without.)" >&2
    exit 2
  fi
fi
[ -d "$images" ] || fail "no photos at $images (--images DIR)"
mkdir -p "$out"
out=$(cd "$out" && pwd)

if ! $cpu_only; then
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
  say "virtualenv with onnxruntime-gpu, CUDA, cuDNN and TensorRT from PyPI"
  venv=$out/venv
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  pip_args=(install -q --disable-pip-version-check -r deploy/gpu/requirements.txt)
  [ -n "$wheelhouse" ] && pip_args+=(--no-index --find-links "$wheelhouse")
  "$venv/bin/pip" "${pip_args[@]}"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ORT_DYLIB_PATH=$(find "$site/onnxruntime/capi" -name 'libonnxruntime.so.1.*' 2>/dev/null | head -n 1 || true)
  [ -n "$ORT_DYLIB_PATH" ] || fail "onnxruntime-gpu installed no libonnxruntime.so.1.*"
  # The providers dlopen CUDA, cuDNN and TensorRT by soname: put every wheel's lib folder on
  # the loader's path.
  libdirs=$(find "$site/nvidia" "$site/tensorrt_libs" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: - || true)
  [ -n "$libdirs" ] || fail "the wheels installed no CUDA or TensorRT libraries under $site"
  LD_LIBRARY_PATH="$libdirs:$(dirname "$ORT_DYLIB_PATH")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export ORT_DYLIB_PATH LD_LIBRARY_PATH
  echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
fi

say "release binary"
bin=target/release/platescore
if [ ! -x "$bin" ]; then
  cargo build --release
fi
"$bin" --version

export PLATESCORE_EXECUTION_PROVIDER_FALLBACK=false
export PLATESCORE_TENSORRT_CACHE_DIR=$out/tensorrt
# TensorRT's profile must cover the largest batch measured: every figure below is for
# max_batch 64 (the default is 32).
export PLATESCORE_MAX_BATCH=64
export PLATESCORE_DATA_DIR=$out/data
export NO_COLOR=1 RUST_LOG=info,ort=warn
unset PLATESCORE_RUNTIME PLATESCORE_ORT_LIBRARY

say "scorer tests on each provider, fallback off"
scorer_tests() {
  if command -v cargo >/dev/null 2>&1; then
    cargo test --release --test scorer -- --nocapture
  else
    local test_bin=
    for candidate in target/release/deps/scorer-*; do
      [ -x "$candidate" ] && [ "$candidate" -nt "$test_bin" ] && test_bin=$candidate
    done
    [ -n "$test_bin" ] || fail "no cargo, and no prebuilt scorer test binary (cargo test --release --test scorer --no-run)"
    "$test_bin" --nocapture
  fi
}
for provider in "${gpu_providers[@]}"; do
  log=$out/tests-$provider.log
  PLATESCORE_TEST_EXECUTION_PROVIDER=$provider scorer_tests >"$log" 2>&1 ||
    fail "scorer tests failed on $provider: $(grep -E 'panicked|FAILED' "$log" | head -n 5)"
  grep -q "^test a_gpu_provider_runs_for_real_and_agrees_with_the_cpu ... ok" "$log" ||
    fail "the $provider scorer test did not run (see $log)"
  grep "test result:" "$log"
done

say "agreement on every photo in $images"
for provider in cpu "${gpu_providers[@]}"; do
  # `score` exits 1 when some photo is refused (the awkward ones are meant to be): the
  # comparison below requires the same refusals on every provider.
  PLATESCORE_EXECUTION_PROVIDER=$provider "$bin" score "$images" \
    >"$out/score-$provider.jsonl" 2>"$out/score-$provider.log" || true
  grep -q "runtime=ort-$provider" "$out/score-$provider.log" ||
    fail "score did not run on ort-$provider: $(tail -n 3 "$out/score-$provider.log")"
done
python3 - "$out" "${gpu_providers[@]}" <<'PY'
import json, sys
out, providers = sys.argv[1], sys.argv[2:]
def load(p):
    return {r["path"]: r for r in map(json.loads, open(f"{out}/score-{p}.jsonl"))}
cpu = load("cpu")
bad = 0
for p in providers:
    other, worst, differ = load(p), 0.0, 0
    for path, a in cpu.items():
        b = other.get(path)
        if b is None or ("error" in a) != ("error" in b):
            print(f"{p}: {path}: outcome differs"); differ += 1; continue
        if "error" in a:
            continue
        if a["labels"][0]["index"] != b["labels"][0]["index"]:
            print(f"{p}: {path}: top-1 {a['labels'][0]['label']} vs {b['labels'][0]['label']}"); differ += 1
        gap = abs((a.get("score") or 0) - (b.get("score") or 0))
        worst = max(worst, gap)
        if gap > 0.05:
            print(f"{p}: {path}: score {a.get('score')} vs {b.get('score')}"); differ += 1
    print(f"{p} vs cpu: {len(cpu)} photos, {differ} disagreements, largest score gap {worst:.4f}")
    bad += differ
sys.exit(1 if bad else 0)
PY

say "bench runtime: batch 1, 8, 32, 64"
sample_gpu_memory() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    while :; do
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1
      sleep 0.2
    done
  fi
}
baseline=
command -v nvidia-smi >/dev/null 2>&1 &&
  baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1 || true)
table=$out/table.md
{
  echo "max_batch 64 (TensorRT profile 1..64), $bench_seconds s per row"
  echo
  echo "| provider | batch | img/s | p50 ms/batch | p99 ms/batch | peak GPU memory MiB |"
  echo "|---|---:|---:|---:|---:|---:|"
} >"$table"
for provider in "${gpu_providers[@]}" cpu; do
  batches=(1 8 32 64)
  # On a GPU machine the CPU rows are a reference only.
  [ "$provider" = cpu ] && ! $cpu_only && batches=(1 8)
  for batch in "${batches[@]}"; do
    sample_gpu_memory >"$out/memory.txt" &
    sampler=$!
    PLATESCORE_EXECUTION_PROVIDER=$provider "$bin" bench runtime --batches "$batch" \
      --seconds "$bench_seconds" >"$out/bench-$provider-$batch.txt" 2>"$out/bench-$provider-$batch.log" ||
      fail "bench runtime on $provider at batch $batch: $(tail -n 3 "$out/bench-$provider-$batch.log")"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    grep -q "^runtime ort-$provider" "$out/bench-$provider-$batch.txt" ||
      fail "bench ran on $(head -n 1 "$out/bench-$provider-$batch.txt"), not ort-$provider"
    line=$(grep "^batch" "$out/bench-$provider-$batch.txt")
    peak=$(sort -n "$out/memory.txt" | tail -n 1)
    memory=-
    [ -n "$peak" ] && [ -n "$baseline" ] && memory=$((peak - baseline))
    awk -v p="$provider" -v b="$batch" -v m="$memory" \
      '{ printf "| %s | %d | %s | %s | %s | %s |\n", p, b, $3, $8, $11, m }' <<<"$line" >>"$table"
    echo "$provider: $line"
  done
done

say "bench pipeline (enqueue → webhook on loopback) per provider"
pipelines=("${gpu_providers[@]}")
$cpu_only && pipelines=(cpu)
# Photos that all score (the pipeline stops on a refused one): the food folder when there is one.
pipeline_images=$images
[ -d "$images/food" ] && pipeline_images=$images/food
for provider in "${pipelines[@]}"; do
  PLATESCORE_EXECUTION_PROVIDER=$provider "$bin" bench pipeline --images "$pipeline_images" --jobs 400 \
    >"$out/pipeline-$provider.txt" 2>"$out/pipeline-$provider.log" ||
    fail "bench pipeline on $provider: $(tail -n 3 "$out/pipeline-$provider.log")"
  sed "s/^/$provider: /" "$out/pipeline-$provider.txt"
done

say "results ($(($(date +%s) - started)) s in all)"
cat "$table"
for provider in "${pipelines[@]}"; do
  sed "s/^/$provider pipeline: /" "$out/pipeline-$provider.txt"
done
