"""Strict schema check of the rendered built-in objects (run by check.sh).

kubernetes-validate carries the Kubernetes OpenAPI schemas as JSON Schema in a "strict"
variant (additionalProperties: false), so a misspelt or misplaced field fails here, which
kubernetes-models (validate.mjs) lets through. CRD kinds are not in it: validate.mjs covers
them. Offline. Usage: python validate_strict.py K8S_VERSION FILE.yaml...
"""
import sys

import kubernetes_validate
import yaml

# Groups whose schemas come from CRDs, validated by validate.mjs instead.
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}


def main() -> int:
    version, files = sys.argv[1], sys.argv[2:]
    checked = skipped = failed = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for obj in docs:
            name = f"{path}: {obj.get('apiVersion')}/{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
            if obj.get("apiVersion", "").split("/")[0] in CRD_GROUPS:
                skipped += 1
                continue
            if obj.get("kind") == "Secret":
                # Kustomize wraps long base64 values; the API server's decoder skips newlines.
                obj["data"] = {k: str(v).replace("\n", "") for k, v in (obj.get("data") or {}).items()}
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as err:
                print(f"{name}: FAIL {err.message} at {'/'.join(map(str, err.path))}", file=sys.stderr)
                failed += 1
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as err:
                print(f"{name}: FAIL no schema: {err}", file=sys.stderr)
                failed += 1
    print(f"strict schema (kubernetes-validate, Kubernetes {version}): {checked} objects valid, "
          f"{failed} failed, {skipped} CRD objects left to validate.mjs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
