#!/usr/bin/env python3
"""Refreshes src/api/examples.json, the example of every schema in the OpenAPI document, from
real traffic: it starts a server, calls every operation, receives the webhooks, and keeps the
first value seen for each schema (nested ones too, following `$ref`s).

Usage: tests/collect_examples.py [path/to/platescore]   (then rebuild, and regenerate
docs/openapi.json with `platescore openapi --output docs/openapi.json`)
The test `every_schema_has_an_example_that_fits_it` checks each example against its schema.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
received = []


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the stdlib's name)
        received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(204)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        # An "image" that is not one: its job fails with unsupported_image_format.
        body = b"this is not a photo"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/debug/platescore")
    work = tempfile.mkdtemp(prefix="platescore-examples.")
    port = free_port()
    env = dict(
        os.environ,
        PLATESCORE_DATA_DIR=f"{work}/data",
        PLATESCORE_LISTEN=f"127.0.0.1:{port}",
        PLATESCORE_OUTBOUND_ALLOW_CIDRS="127.0.0.0/8",
        PLATESCORE_WEBHOOK_RETRY_SCHEDULE="1s,1s",
    )
    for name in ("DATABASE_URL", "PLATESCORE_OBJECT_STORE"):
        env.pop(name, None)
    key = subprocess.run(
        [binary, "partners", "create", "nutrition-app", "--admin"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run([binary, "reconcile", "--now"], env=env, check=True, capture_output=True)
    server = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.DEVNULL)
    hook_server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook_server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{hook_server.server_address[1]}"
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        collect(base, key, hook, binary)
    finally:
        server.terminate()
        server.wait()


def wait_ready(base):
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/health/ready")
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("the server did not become ready")


def call(base, key, method, path, body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(request) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        text = error.read()
    return json.loads(text) if text else None


def multipart(fields, image):
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="lunch.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def collect(base, key, hook, binary):
    spec = json.loads((ROOT / "docs/openapi.json").read_text())
    schemas = spec["components"]["schemas"]
    examples = {}

    def see(value, schema_name):
        remember(value, {"$ref": f"#/components/schemas/{schema_name}"}, schemas, examples)

    endpoint_body = {"url": f"{hook}/platescore", "description": "Food diary production"}
    see(endpoint_body, "CreateWebhookEndpoint")
    endpoint = call(base, key, "POST", "/webhooks", endpoint_body)
    see(endpoint, "CreatedWebhookEndpoint")
    # A second endpoint, disabled: it shows up on the overview.
    old = call(base, key, "POST", "/webhooks", {"url": "http://127.0.0.1:9/gone", "description": "Old staging"})
    call(base, key, "PATCH", f"/webhooks/{old['id']}", {"enabled": False})
    update = {"description": "Food diary production (EU)"}
    see(update, "UpdateWebhookEndpoint")
    see(call(base, key, "PATCH", f"/webhooks/{endpoint['id']}", update), "WebhookEndpoint")
    see(call(base, key, "POST", f"/webhooks/{endpoint['id']}/test"), "WebhookTestResult")
    see(call(base, key, "POST", f"/webhooks/{endpoint['id']}/rotate-secret"), "SigningSecret")
    see(call(base, key, "GET", "/webhooks"), "WebhookEndpointList")

    image = (ROOT / "tests/fixtures/pizza.jpg").read_bytes()
    form = [
        ("metadata", json.dumps({"user_id": "u_1842", "meal": "lunch"})),
        ("diets", "low_sodium"),
        ("lang", "en"),
        ("client_reference", "diary-entry-88121"),
    ]
    body, content_type = multipart(form, image)
    see(dict(form, metadata={"user_id": "u_1842", "meal": "lunch"}, diets=["low_sodium"], image="(JPEG bytes)"), "EnqueueUploadForm")
    queued = call(base, key, "POST", "/enqueue/upload", body, content_type)
    by_url = {
        "image_url": f"{hook}/photos/2291.jpg",
        "webhook_url": f"{hook}/platescore",
        "metadata": {"user_id": "u_77"},
        "diets": ["vegetarian"],
        "lang": "de",
        "client_reference": "diary-entry-88122",
    }
    see(by_url, "EnqueueUrlRequest")
    failing = call(base, key, "POST", "/enqueue", by_url)
    for job_id in (queued["job_id"], failing["job_id"]):
        for _ in range(600):
            job = call(base, key, "GET", f"/status/{job_id}")
            if job["status"] in ("succeeded", "failed") and job["deliveries"]:
                break
            time.sleep(0.1)
    time.sleep(3)
    see(call(base, key, "GET", f"/status/{queued['job_id']}"), "Job")
    see(call(base, key, "GET", f"/status/{failing['job_id']}"), "Job")
    see(call(base, key, "GET", f"/jobs/{queued['job_id']}/deliveries"), "DeliveryList")
    batch = {"job_ids": [queued["job_id"], failing["job_id"], str(uuid.uuid4())]}
    see(batch, "StatusBatchRequest")
    see(call(base, key, "POST", "/status", batch), "StatusBatchResponse")
    see(call(base, key, "GET", "/jobs?limit=1"), "JobPage")
    see(call(base, key, "GET", "/admin/stats"), "UsageStats")
    see(call(base, key, "GET", "/admin/reconcile-runs"), "ReconcileRunList")
    see(call(base, key, "GET", "/admin/overview"), "ServiceOverview")
    see(call(base, key, "GET", "/health/ready"), "Readiness")
    see(call(base, key, "GET", f"/status/{uuid.uuid4()}"), "Problem")
    see(call(base, key, "POST", f"/jobs/{queued['job_id']}/redeliver"), "Redelivery")
    for event in received:
        see(event, {"job.succeeded": "JobSucceededEvent", "job.failed": "JobFailedEvent", "webhook.test": "WebhookTestEvent"}[event["type"]])
    see(call(base, key, "GET", "/keys"), "ApiKeyList")
    see(call(base, key, "GET", "/models"), "ModelList")
    see(call(base, key, "POST", "/keys/rotate"), "RotatedApiKey")

    missing = sorted(set(schemas) - set(examples))
    if missing:
        sys.exit(f"no example seen for: {', '.join(missing)}")
    # The throwaway servers' loopback addresses read as a partner's would.
    text = json.dumps(dict(sorted(examples.items())), indent=2, ensure_ascii=False) + "\n"
    text = text.replace(hook, "https://hooks.nutrition-app.example").replace(
        "http://127.0.0.1:9/gone", "https://staging.nutrition-app.example/gone"
    )
    out = ROOT / "src/api/examples.json"
    out.write_text(text)
    print(f"{len(examples)} examples written to {out.relative_to(ROOT)}")


def remember(value, schema, schemas, examples):
    """Keeps `value` as the example of the schema it fits, then of the schemas inside it."""
    if value is None:
        return
    reference = schema.get("$ref")
    if reference:
        name = reference.rsplit("/", 1)[-1]
        examples.setdefault(name, value)
        remember(value, schemas[name], schemas, examples)
        return
    for part in schema.get("allOf", []):
        remember(value, part, schemas, examples)
    if isinstance(value, dict):
        for field, field_schema in schema.get("properties", {}).items():
            remember(value.get(field), field_schema, schemas, examples)
    elif isinstance(value, list) and value and "items" in schema:
        for item in value:
            remember(item, schema["items"], schemas, examples)


if __name__ == "__main__":
    main()
