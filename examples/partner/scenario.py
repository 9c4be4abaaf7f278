"""The scenario that ./check runs against a platescore server: the kit's own test, not a file
a partner needs. It drives the kit's programs as a partner would run them and checks what
they stored against what the server says.

Environment: PLATESCORE_URL, PLATESCORE_API_KEY; PYTHONPATH with the generated client and
python/. Usage: scenario.py --work DIR --typescript DIR IMAGE...
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
from platescore_client import AuthenticatedClient
from platescore_client.api.jobs import enqueue_upload, get_status_batch, redeliver
from platescore_client.api.webhooks import create_webhook, delete_webhook, get_webhook_secret, test_webhook
from platescore_client.models import (
    CreatedWebhookEndpoint,
    CreateWebhookEndpoint,
    EnqueueUploadForm,
    Job,
    Problem,
    SigningSecret,
    StatusBatchRequest,
    StatusBatchResponse,
    WebhookTestResult,
)
from platescore_client.types import File
from standardwebhooks.webhooks import Webhook

from enqueue import MIME_TYPES

KIT = Path(__file__).resolve().parent
PHASE = 25  # jobs with the Python receiver up, then as many with it down
TS_JOBS = 3
FINISHED = ("succeeded", "failed")
SETTLING = timedelta(seconds=6)  # GET /jobs?updated_since= lists a change once it is 5 s old
CLEANUPS: list[Callable[[], None]] = []  # run at the end, whatever happened


class Checks:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []

    def __call__(self, name: str, ok: bool, detail: Any = "") -> bool:
        (self.passed if ok else self.failed).append(name)
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok or detail == "" else f": {detail}"), flush=True)
        return ok


def step(title: str) -> None:
    print(f"\n--- {title}", flush=True)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A program of the kit, its output appended to a log file."""

    running: ClassVar[list[Process]] = []

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        Process.running.append(self)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Process.running.remove(self)


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """Runs a program of the kit to the end; its stdout, or an exception with its output."""
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def enqueue_jobs(cmd: list[str], hook: str, prefix: str, start: int, count: int, images: list[Path]) -> list[dict]:
    args = ["--webhook-url", hook, "--ref-prefix", prefix, "--start", str(start), "--count", str(count)]
    return [json.loads(line) for line in run(cmd + args + [str(i) for i in images]).splitlines()]


class Server:
    def __init__(self, client: AuthenticatedClient) -> None:
        self.client = client

    def jobs(self, ids: list[str]) -> dict[str, dict]:
        """The jobs as GET/POST /status shows them, as plain JSON."""
        found: dict[str, dict] = {}
        for i in range(0, len(ids), 1000):
            batch = get_status_batch.sync(
                client=self.client, body=StatusBatchRequest(job_ids=[uuid.UUID(j) for j in ids[i : i + 1000]])
            )
            assert isinstance(batch, StatusBatchResponse), batch
            found.update({str(job.job_id): job.to_dict() for job in batch.jobs})
        return found


def delivery(job: dict) -> dict:
    """The job's only delivery (each job here has one destination: its webhook_url)."""
    [only] = job["deliveries"]
    return only


def same_json(a: Any, b: Any) -> bool:
    return a == b  # deep, and 5 == 5.0 (JavaScript writes 5.0 as 5)


class PythonStore:
    """Reads what receiver.py and nightly.py stored (store.py's SQLite file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, *params: Any) -> list[tuple]:
        if not self.path.exists():
            return []
        with sqlite3.connect(self.path, timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def results(self) -> dict[str, dict]:
        cols = ("job_id", "client_reference", "status", "result", "error", "source", "webhook_id")
        rows = self.query(f"SELECT {', '.join(cols)} FROM results")
        return {row[0]: dict(zip(cols, row, strict=True)) for row in rows}

    def messages(self) -> dict[str, int]:
        """webhook_id -> repeats."""
        return dict(self.query("SELECT webhook_id, repeats FROM webhook_messages"))

    def counts(self) -> tuple[int, int]:
        return len(self.results()), len(self.messages())

    def seen(self) -> tuple[set[str], set[str]]:
        return set(self.results()), set(self.messages())


class TypeScriptStore:
    """Reads what receiver.ts stored (a JSON-lines file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def seen(self) -> tuple[set[str], set[str]]:
        lines = self.lines()
        return {m["job_id"] for m in lines if m["stored"]}, {m["webhook_id"] for m in lines}


Seen = Callable[[], tuple[set[str], set[str]]]  # a store's (job ids stored, webhook-ids recorded)


def forgeries(check: Checks, url: str, secret: str, sample: dict, seen: Seen, who: str) -> None:
    """Requests that must not store anything: forged, tampered, stale; and an unknown event type."""
    event = {k: v for k, v in sample.items() if k != "deliveries"} | {"job_id": str(uuid.uuid4())}
    event["type"] = "job.succeeded" if event["status"] == "succeeded" else "job.failed"
    body = json.dumps(event, separators=(",", ":")).encode()
    genuine = Webhook(secret)
    stranger = Webhook("whsec_" + base64.b64encode(os.urandom(24)).decode())

    sent: list[str] = []

    def headers(signer: Webhook, data: bytes, at: datetime) -> dict[str, str]:
        msg_id = f"msg_{uuid.uuid4().hex}"
        sent.append(msg_id)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signer.sign(msg_id, at, data.decode()),
            "content-type": "application/json",
        }

    now = datetime.now(UTC)
    tampered = body.replace(b'"status":"', b'"status":"x', 1)
    cases = [
        ("no signature headers", body, {"content-type": "application/json"}),
        ("signed with another secret", body, headers(stranger, body, now)),
        ("body changed after signing", tampered, headers(genuine, body, now)),
        ("timestamp 10 minutes old", body, headers(genuine, body, now - timedelta(minutes=10))),
        ("malformed signature", body, headers(genuine, body, now) | {"webhook-signature": "v1,@@not base64@@"}),
    ]
    for name, data, hdrs in cases:
        status = httpx.post(url, content=data, headers=hdrs).status_code
        check(f"{who}: {name} is rejected", status in (400, 401), f"HTTP {status}")
    test_event = json.dumps({"type": "kit.unknown_event", "data": {}}).encode()
    status = httpx.post(url, content=test_event, headers=headers(genuine, test_event, now)).status_code
    check(f"{who}: a signed event of an unknown type gets 2xx", 200 <= status < 300, f"HTTP {status}")
    jobs, messages = seen()
    check(f"{who}: and none of these stored anything", event["job_id"] not in jobs and not messages & set(sent))


def scenario(check: Checks, args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    images: list[Path] = args.images
    summary: dict[str, Any] = {}
    run_id = f"kit-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    since = datetime.now(UTC) - timedelta(seconds=5)
    client = AuthenticatedClient(
        base_url=os.environ["PLATESCORE_URL"], token=os.environ["PLATESCORE_API_KEY"], timeout=httpx.Timeout(30)
    )
    server = Server(client)
    python = [sys.executable]
    enqueue_py = [*python, str(KIT / "python" / "enqueue.py")]
    db = work / "results.sqlite"
    store = PythonStore(db)

    step("secrets, and the Python receiver")
    partner_secret = get_webhook_secret.sync(client=client)
    assert isinstance(partner_secret, SigningSecret), partner_secret
    port = free_port()
    hook = f"http://127.0.0.1:{port}/hooks/platescore"
    # A registered endpoint at the same URL, only for POST /webhooks/{id}/test: the jobs below
    # all carry a webhook_url, so nothing else goes there.
    endpoint = create_webhook.sync(
        client=client, body=CreateWebhookEndpoint(url=hook, description=f"partner kit {run_id}")
    )
    assert isinstance(endpoint, CreatedWebhookEndpoint), endpoint

    def remove_endpoint() -> None:
        delete_webhook.sync_detailed(str(endpoint.id), client=client)

    CLEANUPS.append(remove_endpoint)
    receiver_cmd = [*python, str(KIT / "python" / "receiver.py"), "--port", str(port), "--db", str(db)]
    receiver_env = {"PLATESCORE_WEBHOOK_SECRET": f"{partner_secret.secret} {endpoint.secret}"}
    receiver_log = work / "python-receiver.log"
    receiver = Process(receiver_cmd, receiver_log, receiver_env)
    check("receiver.py listens", wait_until(lambda: listening(port), 15), receiver_log.read_text())

    step(f"{PHASE} jobs through the generated Python client, receiver up")
    first = enqueue_jobs(enqueue_py, hook, f"{run_id}-", 0, PHASE, images)
    ids1 = [j["job_id"] for j in first]
    check(f"{PHASE} distinct jobs enqueued", len(set(ids1)) == PHASE, first)
    all_stored = wait_until(lambda: set(ids1) <= store.results().keys(), 90)
    count = len(set(ids1) & store.results().keys())
    check(f"their {PHASE} webhooks verified and stored", all_stored, f"{count} stored")

    step("client_reference: a resend is the same job, a different request is refused")
    image = images[0]
    mime = MIME_TYPES[image.suffix.lower()]
    form = dict(image=File(payload=image.read_bytes(), file_name=image.name, mime_type=mime), webhook_url=hook)
    reference = first[0]["client_reference"]
    again = enqueue_upload.sync_detailed(client=client, body=EnqueueUploadForm(client_reference=reference, **form))
    check(
        "the same client_reference and request return the same job, replayed",
        isinstance(again.parsed, Job)
        and str(again.parsed.job_id) == ids1[0]
        and again.headers.get("idempotent-replayed") == "true",
        f"HTTP {again.status_code} {again.content[:300]!r}",
    )
    other = images[1]
    form["image"] = File(payload=other.read_bytes(), file_name=other.name, mime_type=MIME_TYPES[other.suffix.lower()])
    clash = enqueue_upload.sync_detailed(client=client, body=EnqueueUploadForm(client_reference=reference, **form))
    check(
        "the same client_reference with another image is 409 client_reference_reused",
        clash.status_code == 409
        and isinstance(clash.parsed, Problem)
        and clash.parsed.code == "client_reference_reused",
        f"HTTP {clash.status_code} {clash.content[:300]!r}",
    )

    step("forged and tampered requests to receiver.py")
    sample = server.jobs(ids1[:1])[ids1[0]]
    forgeries(check, hook, partner_secret.secret, sample, store.seen, "receiver.py")

    step("POST /webhooks/{id}/test: a signed webhook.test event")
    tested = test_webhook.sync(str(endpoint.id), client=client)
    if check("POST /webhooks/{id}/test: delivered", isinstance(tested, WebhookTestResult) and tested.delivered, tested):
        # receiver.py logs "ignored webhook.test (<webhook-id>)"
        ignored = f"ignored webhook.test ({tested.webhook_id})" in receiver_log.read_text()
        stored = tested.webhook_id in store.seen()[1]
        check("receiver.py verified it and ignored it (2xx, nothing stored)", ignored and not stored)
    delete_webhook.sync_detailed(str(endpoint.id), client=client)
    CLEANUPS.remove(remove_endpoint)

    step(f"receiver down; {PHASE} more jobs")
    receiver.stop()
    second = enqueue_jobs(enqueue_py, hook, f"{run_id}-", PHASE, PHASE, images)
    ids2 = [j["job_id"] for j in second]
    ids = ids1 + ids2
    check(f"{PHASE} more distinct jobs enqueued", len(set(ids)) == 2 * PHASE, second)
    finished = wait_until(lambda: all(j["status"] in FINISHED for j in server.jobs(ids).values()), 120, 0.5)
    check(f"all {2 * PHASE} jobs finished", finished)
    newest = max(datetime.fromisoformat(j["updated_at"]) for j in server.jobs(ids).values())
    time.sleep(max(0.0, (newest + SETTLING - datetime.now(UTC)).total_seconds()))

    step("nightly.py with the receiver down")
    out = run([*python, str(KIT / "python" / "nightly.py"), "--db", str(db), "--since", since.isoformat()])
    print("  " + out.strip())
    results = store.results()
    caught = [j for j in ids2 if results.get(j, {}).get("source") == "nightly"]
    check(f"nightly.py stored the {PHASE} jobs whose webhook failed", len(caught) == PHASE, f"{len(caught)} stored")

    step("receiver back up: the late webhooks arrive")
    receiver = Process(receiver_cmd, receiver_log, receiver_env)
    check("receiver.py listens again", wait_until(lambda: listening(port), 15))
    # Their first retry (~5 s after the failed attempt) has failed too; the next is minutes
    # away. Redelivering them now is what the retries and the daily reconciliation would do
    # later: the same webhook-ids, the same bodies. Two of the first batch are sent again too.
    jobs = server.jobs(ids)
    msg_ids = {j: delivery(jobs[j])["webhook_id"] for j in ids}
    before = store.messages()
    again = ids1[:2] + ids2
    done = [redeliver.sync(job_id, client=client) for job_id in again]
    check(
        f"POST /jobs/{{id}}/redeliver for {len(again)} jobs",
        all(getattr(d, "deliveries", None) == 1 for d in done),
        done,
    )

    def arrived() -> bool:  # each webhook-id seen for the first time, or once more
        seen = store.messages()
        return all(seen.get(msg_ids[j], -1) > before.get(msg_ids[j], -1) for j in again)

    check(f"receiver.py got all {len(again)} (repeats of webhook-ids)", wait_until(arrived, 60))
    results = store.results()
    check(
        "the jobs stored by nightly.py stay as they were: not stored again from their late webhook",
        all((results.get(j) or {}).get("source") == "nightly" and results[j]["webhook_id"] is None for j in ids2),
    )
    summary["repeats"] = sum(store.messages().get(msg_ids[j], 0) for j in ids1)

    step("nightly.py again: nothing new")
    before = store.results()
    out = run([*python, str(KIT / "python" / "nightly.py"), "--db", str(db)])
    print("  " + out.strip())
    after = store.results()
    # (on a shared server, jobs of others that finished meanwhile may be new: only ours must not be)
    check("a second run changes none of these jobs", all(before.get(j) == after.get(j) for j in ids))
    receiver.stop()

    step(f"every one of the {2 * PHASE} jobs stored exactly once, as the server has it")
    jobs = server.jobs(ids)
    results = store.results()
    refs = {j["job_id"]: j["client_reference"] for j in first + second}
    rows = store.query(
        f"SELECT job_id, COUNT(*) FROM results WHERE job_id IN ({','.join('?' * len(ids))}) GROUP BY job_id", *ids
    )
    check("one row per job", sorted(j for j, n in rows if n == 1) == sorted(ids), rows)
    wrong = []
    for job_id, job in jobs.items():
        row = results.get(job_id)
        expect_source = "webhook" if job_id in ids1 else "nightly"
        problems = [
            row is None and "missing",
            row and row["source"] != expect_source and f"source {row['source']}",
            row and expect_source == "webhook" and row["webhook_id"] != delivery(job)["webhook_id"] and "webhook-id",
            row and expect_source == "nightly" and row["webhook_id"] is not None and "webhook-id set",
            row and row["status"] != job["status"] and "status",
            row and not same_json(json.loads(row["result"] or "null"), job.get("result")) and "result",
            row and not same_json(json.loads(row["error"] or "null"), job.get("error")) and "error",
            row and row["client_reference"] != refs[job_id] and "client_reference",
            job["request"].get("client_reference") != refs[job_id] and "server's request.client_reference",
        ]
        if any(problems):
            wrong.append((job_id, [p for p in problems if p]))
    check(
        "webhook rows carry the server's webhook-id; nightly rows are marked nightly; results, "
        "statuses and client_references match the server",
        not wrong,
        wrong[:5],
    )
    summary.update(
        webhook=sum(1 for j in ids if results.get(j, {}).get("source") == "webhook"),
        nightly=sum(1 for j in ids if results.get(j, {}).get("source") == "nightly"),
        failed_jobs=sum(1 for j in jobs.values() if j["status"] == "failed"),
    )

    typescript(check, args, server, run_id, partner_secret.secret, summary)
    return summary


def typescript(check: Checks, args: argparse.Namespace, server: Server, run_id: str, secret: str, out: dict) -> None:
    step(f"TypeScript: {TS_JOBS} jobs through the typescript-fetch client, receiver.ts verifying")
    dist: Path = args.typescript / "dist"
    port = free_port()
    hook = f"http://127.0.0.1:{port}/hooks/platescore"
    store = TypeScriptStore(args.work / "ts-results.jsonl")
    log = args.work / "ts-receiver.log"
    receiver = Process(
        ["node", str(dist / "receiver.js"), "--port", str(port), "--store", str(store.path)],
        log,
        {"PLATESCORE_WEBHOOK_SECRET": secret},
    )
    check("receiver.ts listens", wait_until(lambda: listening(port), 15), log.read_text())
    enqueued = enqueue_jobs(["node", str(dist / "enqueue.js")], hook, f"{run_id}-ts-", 0, TS_JOBS, args.images)
    ids = [j["job_id"] for j in enqueued]
    check(f"{TS_JOBS} distinct jobs enqueued", len(set(ids)) == TS_JOBS, enqueued)

    def stored() -> dict[str, dict]:
        return {m["job_id"]: m for m in store.lines() if m["stored"]}

    arrived = wait_until(lambda: set(ids) <= stored().keys(), 60)
    check(f"their {TS_JOBS} webhooks verified and stored", arrived, log.read_text()[-2000:])
    jobs, messages = server.jobs(ids), stored()
    wrong = [
        j
        for j in ids
        if j not in messages
        or messages[j]["webhook_id"] != delivery(jobs[j])["webhook_id"]
        or not same_json(messages[j]["result"], jobs[j].get("result"))
        or messages[j]["client_reference"] != jobs[j]["request"].get("client_reference")
    ]
    once = len(store.lines()) == TS_JOBS
    check("each once, with the server's webhook-id, result and client_reference", once and not wrong, wrong)
    forgeries(check, hook, secret, jobs[ids[0]], store.seen, "receiver.ts")
    receiver.stop()
    out["typescript"] = len(messages)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--typescript", type=Path, required=True, help="the built TypeScript project")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the receivers
    check = Checks()
    summary: dict[str, Any] = {}
    try:
        summary = scenario(check, args)
    except Exception:  # noqa: BLE001 (a step that cannot go on: report it with what passed so far)
        traceback.print_exc()
        check("the scenario ran to its end", False)
    finally:
        for process in list(Process.running):
            process.stop()
        for cleanup in CLEANUPS:
            try:
                cleanup()
            except Exception as err:  # noqa: BLE001 (best effort)
                print(f"cleanup: {err!r}")

    print("\n=== summary")
    if summary:
        print(f"Python: {2 * PHASE} jobs, {summary.get('failed_jobs', 0)} of them failed to score (job.failed)")
        print(f"  {summary.get('webhook', 0)} stored from verified webhooks, {summary.get('nightly', 0)} by nightly.py")
        print(f"  {PHASE} late webhooks recorded, not stored again; {summary.get('repeats', 0)} repeats ignored")
        print(f"TypeScript: {summary.get('typescript', 0)}/{TS_JOBS} jobs stored from verified webhooks")
    for name in check.failed:
        print(f"FAILED: {name}")
    print(f"partner-kit: {len(check.passed)} passed, {len(check.failed)} failed")
    sys.exit(1 if check.failed else 0)


if __name__ == "__main__":
    main()
