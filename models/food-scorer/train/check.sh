#!/usr/bin/env bash
# CI check of the training recipe: trains on the committed tiny GroceryStoreDataset subset
# (tests/fixtures/grocery-tiny) into a temporary models folder beside the base model,
# verifies the written folder, and, with PLATESCORE_BIN set, runs `platescore eval` on it and
# serves it: GET /models lists it and a job that names it is scored by it.
#   TRAIN_VENV (default target/tools/train-venv): the venv, created and reused.
#   PLATESCORE_BIN: the server binary (optional).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$repo"
venv="${TRAIN_VENV:-target/tools/train-venv}"
req=models/food-scorer/train/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
py="$venv/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
models="$work/models"
mkdir -p "$models"
ln -s "$repo/models/food-scorer" "$models/food-scorer"
fixture=tests/fixtures/grocery-tiny
id=grocery-tiny

"$py" models/food-scorer/train/train.py --list "$fixture/list.csv" --classes "$fixture/classes.csv" \
  --base "$models/food-scorer" --out "$models/$id" --seed 15 --holdout 0.25 \
  --data-licence "GroceryStoreDataset, MIT (c) 2019 Marcus Klasson" --data-licence-file "$fixture/LICENSE"

# The folder is whole and its manifest matches its files.
"$py" - "$models/$id" <<'PY'
import hashlib, json, pathlib, sys, tomllib
d = pathlib.Path(sys.argv[1])
for f in ("model.onnx", "manifest.json", "labels.txt", "food_classes.toml", "tips.toml", "LICENSE"):
    assert (d / f).is_file(), f"missing {f}"
m = json.loads((d / "manifest.json").read_text())
assert m["id"] == d.name, m["id"]
assert hashlib.sha256((d / m["file"]).read_bytes()).hexdigest() == m["sha256"], "sha256 mismatch"
assert m["version"].endswith(m["sha256"][:12])
h = m["head"]
labels = (d / "labels.txt").read_text().splitlines()
assert len(labels) == 1000 + h["classes"] == m["output"]["classes"] - 1, len(labels)
assert h["similarity"] == 1000 + h["classes"] and h["gate"]["high"] > h["gate"]["low"]
table = tomllib.loads((d / "food_classes.toml").read_text())
head = [c for c in table["food"] if c["index"] >= 1000]
assert [c["label"] for c in sorted(head, key=lambda c: c["index"])] == labels[1000:]
assert all(1 <= c["score"] <= 5 for c in head)
print(f"check.sh: {d.name} ok: {h['classes']} head classes, held-out accuracy {h['holdout_accuracy']}, sha256 {m['sha256'][:12]}")
PY

# Errors are clear and leave nothing behind.
printf 'label,group,score,rationale\nApple,fruit,7,x\nCarrots,vegetable,5,x\n' >"$work/bad.csv"
if "$py" models/food-scorer/train/train.py --photos "$fixture/photos" --classes "$work/bad.csv" \
    --base "$models/food-scorer" --out "$models/bad" 2>"$work/err"; then
  echo "check.sh: a score of 7 was accepted" >&2; exit 1
fi
grep -q "score for 'Apple' must be an integer from 1 to 5" "$work/err" && [ ! -e "$models/bad" ] || { cat "$work/err" >&2; exit 1; }
cat "$work/err"

if [ -n "${PLATESCORE_BIN:-}" ]; then
  # `platescore eval` reads the new model.
  PLATESCORE_MODELS_DIR="$models" "$PLATESCORE_BIN" eval "$fixture/eval" --model "$id" --json \
    >"$work/eval.json"
  "$py" - "$work/eval.json" "$id" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["model"] == sys.argv[2], report["model"]
assert report["errors"] == 0 and report["photos"] == len(report["rows"]), report
assert report["balanced_accuracy"] is not None
print(f"check.sh: eval ok: balanced accuracy {report['balanced_accuracy']} over {report['photos']} photos")
PY

  # The server offers it and scores a job with it.
  export PLATESCORE_MODELS_DIR="$models" PLATESCORE_DATA_DIR="$work/data"
  port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  export PLATESCORE_LISTEN="127.0.0.1:$port"
  key="$(RUST_LOG=warn "$PLATESCORE_BIN" partners create "training check" 2>/dev/null)"
  "$PLATESCORE_BIN" serve >"$work/serve.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
  base="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    curl -fs "$base/health/ready" >/dev/null && break
    kill -0 $server 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.2
  done
  job="$(curl -fsS -H "Authorization: Bearer $key" -F "image=@$fixture/eval/food/carrots/$(ls "$fixture/eval/food/carrots" | head -1)" \
    -F "model_id=$id" "$base/enqueue")"
  job_id="$(echo "$job" | "$py" -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')"
  for _ in $(seq 100); do
    curl -fsS -H "Authorization: Bearer $key" "$base/status/$job_id" >"$work/job.json"
    grep -q '"status": *"\(succeeded\|failed\)"' "$work/job.json" && break
    sleep 0.2
  done
  # After the job: a model other than the default loads on its first job.
  curl -fsS -H "Authorization: Bearer $key" "$base/models" >"$work/models.json"
  "$py" - "$work/models.json" "$work/job.json" "$models/$id/manifest.json" <<'PY'
import json, sys
models, job, manifest = (json.load(open(p)) for p in sys.argv[1:])
mine = next(m for m in models["models"] if m["id"] == manifest["id"])
assert mine["trained_classes"] == manifest["head"]["classes"], mine
assert job["status"] == "succeeded", job
assert job["request"]["model_id"] == manifest["id"], job["request"]
assert job["result"]["model_version"] == mine["runtime_version"], (job["result"], mine)
assert job["result"]["model_version"].startswith(manifest["version"]), job["result"]
print(f"check.sh: served: {manifest['id']} scored a job, top label {job['result']['labels'][0]['label']}")
PY
fi
echo "check.sh: ok"
