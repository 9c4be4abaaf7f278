"""The nightly catch-up: stores the results of finished jobs whose webhook never arrived.

    PLATESCORE_URL=https://platescore.example.com PLATESCORE_API_KEY=psk_... \\
        python nightly.py --db results.sqlite

It asks `GET /jobs?updated_since=T` for every job that changed since its last run (oldest
change first, page by page with `next_cursor`) and stores each finished one that the
results file does not have yet, marked `source = 'nightly'`. Then it remembers the latest
`updated_at` it saw as the next run's T. Run it from cron; running it twice is harmless.
The first run looks back `--since` (default: two days).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta

import httpx
from platescore_client import AuthenticatedClient
from platescore_client.api.jobs import list_jobs
from platescore_client.models import JobPage, JobState
from platescore_client.types import UNSET

from store import ResultStore

STATE = "nightly.updated_since"
FINISHED = (JobState.SUCCEEDED, JobState.FAILED)


def catch_up(client: AuthenticatedClient, store: ResultStore, since: datetime) -> tuple[int, int]:
    """Returns (jobs listed, results stored)."""
    listed = stored = 0
    watermark = since
    cursor: str | None = None
    while True:
        # platescore lists a change once it is 5 seconds old: none committed late is skipped.
        page = list_jobs.sync(client=client, updated_since=since, limit=200, cursor=cursor or UNSET)
        if not isinstance(page, JobPage):
            raise RuntimeError(f"GET /jobs failed: {page}")
        for job in page.jobs:
            listed += 1
            watermark = max(watermark, job.updated_at)
            # Queued and in-progress jobs change again when they finish: a later run sees them.
            if job.status in FINISHED and store.save_fetched(job.to_dict()):
                stored += 1
                print(f"stored {job.status} job {job.job_id} ({job.request.client_reference})", file=sys.stderr)
        # Oldest change first: everything up to here is done even if a later page fails.
        store.set_state(STATE, watermark.isoformat())
        if not page.next_cursor:
            return listed, stored
        cursor = page.next_cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="results.sqlite", help="the SQLite file (see store.py)")
    parser.add_argument("--since", type=datetime.fromisoformat, help="first run: look back to (RFC 3339)")
    args = parser.parse_args()

    store = ResultStore(args.db)
    saved = store.get_state(STATE)
    if saved:
        since = datetime.fromisoformat(saved)
    elif args.since:
        since = args.since if args.since.tzinfo else args.since.replace(tzinfo=UTC)
    else:
        since = datetime.now(UTC) - timedelta(days=2)

    client = AuthenticatedClient(
        base_url=os.environ["PLATESCORE_URL"],
        token=os.environ["PLATESCORE_API_KEY"],
        timeout=httpx.Timeout(30),
        raise_on_unexpected_status=True,
    )
    with client:
        listed, stored = catch_up(client, store, since)
    store.close()
    print(f"nightly: since {since.isoformat()}: {listed} changed, {stored} stored that no webhook had brought")


if __name__ == "__main__":
    main()
