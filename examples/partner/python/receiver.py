"""Receives platescore webhooks: verifies each one (Standard Webhooks), stores the job's result
once, and answers 2xx quickly.

    PLATESCORE_WEBHOOK_SECRET=whsec_... python receiver.py --port 8000 --db results.sqlite

The secret is the one that signs what this URL receives: the partner-wide secret of
`GET /webhook-secret` for per-job `webhook_url`s, or the endpoint's own secret from
`POST /webhooks`. Give several, separated by spaces (or repeat --secret), when one receiver
takes both. Python 3.11 standard library + the `standardwebhooks` package + the generated
client (`platescore_client`, for the typed event models).

Answers: 204 once a message is stored (or was already: retries and redeliveries repeat the
webhook-id), 204 for event types it does not know (e.g. `webhook.test`), 401 when the
signature or timestamp does not verify, 404 for another path, 413 for a body over 1 MiB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from platescore_client.models import JobFailedEvent, JobSucceededEvent
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from store import ResultStore

MAX_BODY = 1 << 20  # platescore's bodies are a few KiB
EVENT_MODELS = {"job.succeeded": JobSucceededEvent, "job.failed": JobFailedEvent}

log = logging.getLogger("receiver")


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hook_path: str, secrets: list[str], store: ResultStore) -> None:
        super().__init__(address, Handler)
        self.hook_path = hook_path
        self.verifiers = [Webhook(secret) for secret in secrets]
        self.store = store

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        """True if any secret verifies the signature and the timestamp is within 5 minutes."""
        for verifier in self.verifiers:
            try:
                verifier.verify(body, headers, json_parse=False)
                return True
            except (WebhookVerificationError, ValueError):  # ValueError: malformed header or body
                continue
        return False


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        if self.path != self.server.hook_path:
            return self.reply(404, "not found")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return self.reply(400, "bad content-length")
        if length > MAX_BODY:
            return self.reply(413, "too large")
        body = self.rfile.read(length)  # the raw bytes: the signature covers exactly these

        headers = {name.lower(): value for name, value in self.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        if not self.server.verify(body, headers):
            log.warning("rejected %r: signature or timestamp does not verify", webhook_id)
            return self.reply(401, "invalid signature")

        try:
            payload = json.loads(body)
            kind = payload.get("type") if isinstance(payload, dict) else None
            model = EVENT_MODELS.get(kind) if isinstance(kind, str) else None
            event = model.from_dict(payload) if model else None  # typed: event.job_id, event.result.score...
        except (KeyError, TypeError, ValueError):
            # Verified but not what this code expects: a 5xx makes platescore retry, after a fix.
            log.exception("cannot parse %s", webhook_id)
            return self.reply(500, "cannot parse event")
        if event is None:
            log.info("ignored %s (%s)", kind, webhook_id)  # e.g. webhook.test
            return self.reply(204)

        outcome = self.server.store.save_webhook(webhook_id, event.to_dict())
        log.info("%s %s job %s (%s)", outcome, event.type_, event.job_id, webhook_id)
        # Slow work (notifying users, ...) belongs after the reply, e.g. in a queue.
        self.reply(204)

    def reply(self, status: int, message: str = "") -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request is logged above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 behind your TLS proxy")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--path", default="/hooks/platescore", help="the URL path to accept")
    parser.add_argument("--db", default="results.sqlite", help="the SQLite file (see store.py)")
    parser.add_argument("--secret", action="append", help="whsec_...; default: $PLATESCORE_WEBHOOK_SECRET")
    args = parser.parse_args()
    secrets = args.secret or os.environ.get("PLATESCORE_WEBHOOK_SECRET", "").split()
    if not secrets:
        parser.error("no secret: set PLATESCORE_WEBHOOK_SECRET or pass --secret")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s receiver %(message)s", stream=sys.stderr)
    server = Receiver((args.host, args.port), args.path, secrets, ResultStore(args.db))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly on kill / docker stop
    log.info("listening on http://%s:%d%s", args.host, args.port, args.path)
    try:
        server.serve_forever()
    finally:
        server.store.close()


if __name__ == "__main__":
    main()
