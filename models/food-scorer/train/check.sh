#!/usr/bin/env bash
# CI check of the training recipe: trains on the committed tiny GroceryStoreDataset subset
# (tests/fixtures/grocery-tiny) into a temporary models folder beside the base model,
# verifies the written folder, and, with PLATESCORE_BIN set, runs `platescore eval` on it.
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
  PLATESCORE_MODELS_DIR="$models" "$PLATESCORE_BIN" eval "$fixture/eval" --model "$id" --json
fi
echo "check.sh: ok"
