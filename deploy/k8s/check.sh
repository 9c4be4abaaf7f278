#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (CI runs this): render every overlay with
# kustomize, validate every object against the Kubernetes API schemas (and the KEDA and
# prometheus-operator CRD schemas), then run checkov. The tools are installed on the first run
# (PyPI and npm) into ${PLATESCORE_TOOLS_DIR:-target/tools}; later runs reuse them.
# Needs: python3 (3.11+) with pip, node (20+) with npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
K8S_DIR=deploy/k8s
TOOLS="${PLATESCORE_TOOLS_DIR:-$ROOT/target/tools}"
OUT="${PLATESCORE_K8S_RENDERED:-$ROOT/target/k8s-rendered}"
# The Kubernetes release whose schemas the built-in objects are checked against; it must be
# one that the pinned kubernetes-validate ships.
K8S_VERSION=1.37.0
VENV="$TOOLS/k8s-venv"
NODE_DIR="$TOOLS/k8s-node"
start=$SECONDS

log() { printf '==> %s\n' "$*"; }
die() { printf 'check.sh: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required"
command -v node >/dev/null || die "node is required"
command -v npm >/dev/null || die "npm is required"
mkdir -p "$TOOLS"

# 1. Python tools (kubectl with its kustomize, checkov, kubernetes-validate), from the lock.
stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }
py_stamp="$(stamp "$K8S_DIR/requirements.txt")-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$py_stamp" ]]; then
  log "installing Python tools into $VENV"
  rm -rf "$VENV"
  if python3 -m venv "$VENV" >/dev/null 2>&1; then
    pip=("$VENV/bin/python" -m pip)
  else
    # Debian without python3-venv has no ensurepip: let the system pip fill a bare venv.
    rm -rf "$VENV"
    python3 -m venv --without-pip "$VENV"
    pip=(python3 -m pip --python "$VENV/bin/python")
  fi
  "${pip[@]}" install --quiet --disable-pip-version-check --no-input -r "$K8S_DIR/requirements.txt"
  echo "$py_stamp" > "$VENV/.stamp"
fi
KUBECTL="$VENV/bin/kubectl"
CHECKOV="$VENV/bin/checkov"

# 2. Node validator (kubernetes-models), from package-lock.json, outside the source tree.
node_stamp="$(stamp "$K8S_DIR/package.json" "$K8S_DIR/package-lock.json")-$(node --version)"
if [[ "$(cat "$NODE_DIR/.stamp" 2>/dev/null)" != "$node_stamp" || ! -d "$NODE_DIR/node_modules" ]]; then
  log "installing the node validator into $NODE_DIR"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "$K8S_DIR/package.json" "$K8S_DIR/package-lock.json" "$NODE_DIR/"
  # kubernetes-models 5 declares node >= 22 but runs on node 20 (checked in CI): the engine
  # mismatch is only a warning.
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$node_stamp" > "$NODE_DIR/.stamp"
fi
# Run from the install folder so that its node_modules resolve.
cp "$K8S_DIR/validate.mjs" "$NODE_DIR/validate.mjs"

# 3. Render every overlay.
rm -rf "$OUT"
mkdir -p "$OUT"
overlays=()
for dir in "$K8S_DIR"/overlays/*/; do
  name="$(basename "$dir")"
  overlays+=("$name")
  "$KUBECTL" kustomize "$dir" > "$OUT/$name.yaml" || die "kustomize failed for overlay $name"
done
[[ ${#overlays[@]} -gt 0 ]] || die "no overlays found"
files=("${overlays[@]/#/$OUT/}")
files=("${files[@]/%/.yaml}")
log "rendered ${#overlays[@]} overlays into $OUT"

# 4. Schemas: every object through kubernetes-models (unknown kinds fail), and the built-in
#    kinds again through kubernetes-validate's strict schemas (unknown fields fail).
log "validating against the schemas"
node "$NODE_DIR/validate.mjs" "${files[@]}"
"$VENV/bin/python" "$K8S_DIR/validate_strict.py" "$K8S_VERSION" "${files[@]}"

# 5. checkov: fail on any finding not skipped with a reason (.checkov.yaml or an annotation).
log "running checkov"
checkov_json="$OUT/checkov.json"
checkov_rc=0
"$CHECKOV" --config-file "$K8S_DIR/.checkov.yaml" "${files[@]/#/--file=}" --output json > "$checkov_json" || checkov_rc=$?
"$VENV/bin/python" - "$checkov_json" "$checkov_rc" "$K8S_DIR/.checkov.yaml" "${files[@]}" <<'PY'
import json, sys, yaml
report_path, rc, config_path, files = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
report = json.load(open(report_path))
reports = report if isinstance(report, list) else [report]
passed = skipped = 0
failed = []
for r in reports:
    res = r.get("results", {})
    passed += len(res.get("passed_checks", []))
    skipped += len(res.get("skipped_checks", []))
    failed += res.get("failed_checks", [])
for c in failed:
    print(f"checkov FAILED {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})", file=sys.stderr)
if rc != 0 and not failed:
    print(f"checkov exited with {rc} without findings: see {report_path}", file=sys.stderr)
    sys.exit(1)
skip_ids = yaml.safe_load(open(config_path)).get("skip-check", [])
for path in files:
    objs = [d for d in yaml.safe_load_all(open(path)) if d]
    print(f"  {path.rsplit('/', 1)[-1]}: {len(objs)} objects")
print(f"checkov: {passed} passed, {len(failed)} failed, {skipped} skipped by annotation, "
      f"{len(skip_ids)} checks off in .checkov.yaml ({', '.join(skip_ids)})")
sys.exit(1 if failed else 0)
PY
log "all checks passed in $((SECONDS - start)) s"
