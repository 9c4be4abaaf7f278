#!/usr/bin/env bash
# Benchmark (not a test): GET /admin/overview, what /dashboard polls every 5 s, over a
# database holding JOBS jobs enqueued and finished in the last hour (default 360,000, i.e.
# 100 jobs/s; 2% failed), against a release build on loopback: the first request (the
# node's cache of final minutes empty) and the refreshes after it; then GET /admin/stats
# over the same jobs.
#   tests/bench/overview.sh sqlite [JOBS]
#   .ci/with-postgres tests/bench/overview.sh postgres [JOBS]
# Env: BENCH_REQUESTS (default 20).
set -euo pipefail
cd "$(dirname "$0")/../.."
backend=${1:-sqlite}
jobs=${2:-360000}
requests=${BENCH_REQUESTS:-20}
bin=target/release/platescore
[ -x "$bin" ] || cargo build --release

work=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/platescore-bench.XXXXXX")
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PLATESCORE_DATA_DIR="$work/data" PLATESCORE_LISTEN="127.0.0.1:$port" RUST_LOG=warn
unset PLATESCORE_OBJECT_STORE
key=
case "$backend" in
  sqlite)
    unset DATABASE_URL
    key=$("$bin" partners create ops --admin 2>/dev/null)
    # Jobs spread evenly over the last hour, each finished 200 ms after it was enqueued,
    # with timestamps written as the service writes them (RFC 3339, UTC offset).
    sqlite3 "$work/data/platescore.db" <<SQL
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $jobs - 1),
t AS (SELECT i, julianday('now') - (i * 3600.0 / $jobs) / 86400.0 AS created FROM n)
INSERT INTO jobs (id, partner_id, status, request_fingerprint, attempts, created_at,
                  updated_at, finished_at, run_at, error_code, result, processing_time_ms)
SELECT randomblob(16), (SELECT id FROM partners LIMIT 1),
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'bench', 1,
       strftime('%Y-%m-%dT%H:%M:%f+00:00', created), strftime('%Y-%m-%dT%H:%M:%f+00:00', created),
       strftime('%Y-%m-%dT%H:%M:%f+00:00', created + 0.2 / 86400.0),
       strftime('%Y-%m-%dT%H:%M:%f+00:00', created),
       CASE WHEN i % 50 = 0 THEN 'image_corrupt' END,
       CASE WHEN i % 50 <> 0 THEN json_object('is_food', json(CASE WHEN i % 7 = 0 THEN 'false' ELSE 'true' END),
         'rating', 1 + i % 5, 'labels', json_array(json_object('label', 'label_' || (i % 40)))) END,
       50 + i % 200
FROM t;
ANALYZE;
SQL
    ;;
  postgres)
    : "${PLATESCORE_TEST_DATABASE_URL:?run under .ci/with-postgres}"
    export DATABASE_URL="$PLATESCORE_TEST_DATABASE_URL"
    key=$("$bin" partners create ops --admin 2>/dev/null)
    psql -q "$DATABASE_URL" <<SQL
INSERT INTO jobs (id, partner_id, status, request_fingerprint, attempts, created_at,
                  updated_at, finished_at, run_at, error_code, result, processing_time_ms)
SELECT gen_random_uuid(), (SELECT id FROM partners LIMIT 1),
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'bench', 1,
       now() - i * (interval '1 hour' / $jobs), now() - i * (interval '1 hour' / $jobs),
       now() - i * (interval '1 hour' / $jobs) + interval '200 milliseconds',
       now() - i * (interval '1 hour' / $jobs),
       CASE WHEN i % 50 = 0 THEN 'image_corrupt' END,
       CASE WHEN i % 50 <> 0 THEN jsonb_build_object('is_food', i % 7 <> 0, 'rating', 1 + i % 5,
         'labels', jsonb_build_array(jsonb_build_object('label', 'label_' || (i % 40)))) END,
       50 + i % 200
FROM generate_series(0, $jobs - 1) AS i;
ANALYZE jobs;
SQL
    ;;
  *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
esac

"$bin" serve --role api 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done

url="http://127.0.0.1:$port/admin/overview"
get() { curl -fsS -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $key" "$url"; }
first=$(get)
finished=$(curl -fsS -H "Authorization: Bearer $key" "$url" |
  python3 -c 'import json,sys; m=json.load(sys.stdin)["minutes"]; print(sum(x["succeeded"]+x["failed"] for x in m))')
times=$(for _ in $(seq 1 "$requests"); do get; done | sort -n)
echo "backend=$backend jobs_in_window=$finished requests=$requests"
awk -v t="$first" 'BEGIN { printf "first request: %.0f ms\n", t * 1000 }'
echo "$times" | awk '{ t[NR] = $1 * 1000 } END {
  printf "refreshes: min %.0f ms, median %.0f ms, max %.0f ms\n", t[1], t[int((NR + 1) / 2)], t[NR] }'
stats=$(curl -fsS -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $key" \
  "http://127.0.0.1:$port/admin/stats?days=1")
awk -v t="$stats" 'BEGIN { printf "stats (days=1, all partners): %.0f ms\n", t * 1000 }'
