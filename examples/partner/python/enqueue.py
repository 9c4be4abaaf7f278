"""Enqueues photos with the generated client, each under a client_reference of yours.

    PLATESCORE_URL=https://platescore.example.com PLATESCORE_API_KEY=psk_... \\
        python enqueue.py --webhook-url https://you.example.com/hooks/platescore \\
                          --ref-prefix meal-2026-11-30- lunch.jpg dinner.jpg

Prints one JSON line per job: {"client_reference", "job_id", "replayed"}.

`client_reference` is your own id for the job, unique among your jobs. Sending the same one
again with the same request returns the same job (`Idempotent-Replayed: true`) instead of
creating a second, so a request that timed out or failed is simply sent again; the same
reference with a different request is refused (409 `client_reference_reused`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx
from platescore_client import AuthenticatedClient
from platescore_client.api.jobs import enqueue_upload
from platescore_client.models import EnqueueUploadForm, EnqueueUploadFormMetadata, Job, Problem
from platescore_client.types import UNSET, File

MIME_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
RETRIABLE = {429, 500, 502, 503, 504}


def enqueue_photo(client: AuthenticatedClient, form: EnqueueUploadForm, attempts: int = 5) -> tuple[Job, bool]:
    """Enqueues one photo, retrying transient failures; returns (job, replayed)."""
    for attempt in range(1, attempts + 1):
        try:
            response = enqueue_upload.sync_detailed(client=client, body=form)
        except httpx.TransportError as err:  # timeout, connection reset: did it arrive? Ask again.
            failure = repr(err)
        else:
            if isinstance(response.parsed, Job):
                return response.parsed, response.headers.get("idempotent-replayed") == "true"
            if response.status_code not in RETRIABLE:
                problem = response.parsed
                detail = f"{problem.code}: {problem.detail}" if isinstance(problem, Problem) else response.content
                raise RuntimeError(f"{form.client_reference}: {response.status_code} {detail!r}")
            failure = f"HTTP {response.status_code}"
        if attempt < attempts:
            time.sleep(min(2**attempt, 30))  # the same client_reference makes the retry safe
    raise RuntimeError(f"{form.client_reference}: gave up after {attempts} attempts ({failure})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="JPEG, PNG or WebP files")
    parser.add_argument("--webhook-url", help="where platescore POSTs each result (else: poll)")
    parser.add_argument("--ref-prefix", default="photo-", help="client_reference = prefix + number")
    parser.add_argument("--start", type=int, default=0, help="the first number")
    parser.add_argument("--count", type=int, help="jobs to enqueue, cycling through the images (default: one each)")
    parser.add_argument("--metadata", type=json.loads, help="a JSON object of yours, returned with each job")
    args = parser.parse_args()
    metadata = EnqueueUploadFormMetadata.from_dict(args.metadata) if args.metadata else UNSET

    client = AuthenticatedClient(
        base_url=os.environ["PLATESCORE_URL"],
        token=os.environ["PLATESCORE_API_KEY"],
        timeout=httpx.Timeout(30),
    )
    with client:
        for n in range(args.count or len(args.images)):
            path = args.images[n % len(args.images)]
            reference = f"{args.ref_prefix}{args.start + n:04d}"
            mime_type = MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")
            form = EnqueueUploadForm(
                image=File(payload=path.read_bytes(), file_name=path.name, mime_type=mime_type),
                client_reference=reference,
                webhook_url=args.webhook_url or UNSET,
                metadata=metadata,
            )
            job, replayed = enqueue_photo(client, form)
            print(json.dumps({"client_reference": reference, "job_id": str(job.job_id), "replayed": replayed}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
