// Validates every object of the rendered manifests against the OpenAPI schemas shipped in
// npm's kubernetes-models (Kubernetes API) and @kubernetes-models/{keda,prometheus-operator}
// (CRDs). Offline. An object whose apiVersion/kind has no model fails: nothing passes unchecked.
// Usage: node validate.mjs FILE.yaml...   (check.sh runs it from target/tools/k8s-node)
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// API group -> npm package holding its models (the core group and built-in groups live in
// kubernetes-models).
const CRD_PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const path = group === "" ? `kubernetes-models/${version}/${kind}`
    : CRD_PACKAGES[group] ? `${CRD_PACKAGES[group]}/${group}/${version}/${kind}`
    : `kubernetes-models/${group}/${version}/${kind}`;
  try {
    const module = await import(path);
    return module[kind] ?? null;
  } catch (err) {
    if (err.code === "ERR_PACKAGE_PATH_NOT_EXPORTED" || err.code === "ERR_MODULE_NOT_FOUND") return null;
    throw err;
  }
}

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length > 0) {
      console.error(`${file}: YAML error: ${doc.errors[0].message}`);
      failures++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    // Kustomize wraps long base64 values over several lines; the API server's decoder (Go's
    // encoding/base64) skips newlines, the schema's "byte" format does not.
    if (obj.kind === "Secret" && obj.data) {
      for (const key of Object.keys(obj.data)) obj.data[key] = String(obj.data[key]).replace(/\n/g, "");
    }
    const id = `${file}: ${obj.apiVersion}/${obj.kind} ${obj.metadata?.name ?? "(no name)"}`;
    const Model = obj.apiVersion && obj.kind ? await modelFor(obj.apiVersion, obj.kind) : null;
    if (!Model) {
      console.error(`${id}: FAIL no schema for this apiVersion/kind`);
      failures++;
      continue;
    }
    try {
      new Model(obj).validate();
      checked++;
    } catch (err) {
      console.error(`${id}: FAIL ${err.message}`);
      failures++;
    }
  }
}
console.log(`schema (kubernetes-models): ${checked} objects valid, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
