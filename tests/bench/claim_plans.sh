#!/usr/bin/env bash
# The query plans of the two fair claims, on SQLite and on PostgreSQL, over 20,000 waiting
# jobs and deliveries of 50 partners (the plans in docs/architecture.md come from here).
# Usage: tests/bench/claim_plans.sh target/debug/platescore   (PostgreSQL via .ci/with-postgres)
set -euo pipefail
bin=$(realpath "${1:-target/debug/platescore}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

seed_jobs="INSERT INTO jobs (id, partner_id, status, request_fingerprint, attempts, created_at,
  updated_at, run_at, turn)"
jobs_claim="SELECT id FROM jobs WHERE status = 'queued' AND run_at <= '2026-11-30 12:00:00+00'
  ORDER BY turn, run_at, id LIMIT 8"
deliveries_claim="SELECT id FROM deliveries WHERE status = 'pending'
  AND next_attempt_at <= '2026-11-30 12:00:00+00'
  AND url NOT IN (SELECT value FROM json_each('[\"https://slow.example/hook\"]'))
  ORDER BY turn, next_attempt_at, id LIMIT 8"
next_turn="SELECT MAX(COALESCE((SELECT MAX(turn) FROM jobs WHERE status = 'in_progress'), 0),
  COALESCE((SELECT MAX(turn) FROM jobs WHERE partner_id = 'p7' AND status = 'queued'), 0)) + 1"

echo "== SQLite"
PLATESCORE_DATA_DIR="$work" "$bin" migrate >/dev/null
sqlite3 "$work/platescore.db" <<SQL
PRAGMA foreign_keys = OFF;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
$seed_jobs SELECT printf('j%05d', i), 'p' || (i % 50), 'queued', 'x', 0,
  '2026-11-30 11:00:00+00:00', '2026-11-30 11:00:00+00:00', '2026-11-30 11:00:00+00:00', i / 50 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
INSERT INTO deliveries (id, job_id, partner_id, url, event_type, payload, status, attempts,
  next_attempt_at, created_at, updated_at, turn)
SELECT printf('d%05d', i), printf('j%05d', i), 'p' || (i % 50), 'https://p' || (i % 50) || '.example/hook',
  'job.succeeded', '{}', 'pending', 0, '2026-11-30 11:00:00+00:00', '2026-11-30 11:00:00+00:00',
  '2026-11-30 11:00:00+00:00', i / 50 FROM n;
ANALYZE;
.print '-- the job claim'
EXPLAIN QUERY PLAN $jobs_claim;
.print '-- the delivery claim'
EXPLAIN QUERY PLAN $deliveries_claim;
.print '-- a partner''s next turn'
EXPLAIN QUERY PLAN $next_turn;
SQL

if [ -n "${PLATESCORE_TEST_DATABASE_URL:-}" ]; then
  echo "== PostgreSQL"
  url="$PLATESCORE_TEST_DATABASE_URL"
  PLATESCORE_DATABASE_URL="$url" "$bin" migrate >/dev/null
  pg_jobs_claim=${jobs_claim}
  pg_deliveries_claim=${deliveries_claim//SELECT value FROM json_each(\'\[\"https:\/\/slow.example\/hook\"\]\')/SELECT jsonb_array_elements_text(\'[\"https://slow.example/hook\"]\'::jsonb)}
  psql -q -X "$url" <<SQL
INSERT INTO partners (id, name, key_prefix, key_hash, created_at, is_admin)
SELECT md5('p' || i)::uuid, 'p' || i, 'x', md5('p' || i), now(), false FROM generate_series(0, 49) i;
$seed_jobs SELECT md5('j' || i)::uuid, md5('p' || (i % 50))::uuid, 'queued', 'x', 0, now(), now(),
  now() - interval '1 hour', i / 50 FROM generate_series(1, 20000) i;
INSERT INTO deliveries (id, job_id, partner_id, url, event_type, payload, status, attempts,
  next_attempt_at, created_at, updated_at, turn)
SELECT md5('d' || i)::uuid, md5('j' || i)::uuid, md5('p' || (i % 50))::uuid,
  'https://p' || (i % 50) || '.example/hook', 'job.succeeded', '{}', 'pending', 0,
  now() - interval '1 hour', now(), now(), i / 50 FROM generate_series(1, 20000) i;
VACUUM ANALYZE jobs;
VACUUM ANALYZE deliveries;
\echo '-- the job claim'
EXPLAIN (COSTS OFF) $pg_jobs_claim FOR UPDATE SKIP LOCKED;
\echo '-- the delivery claim'
EXPLAIN (COSTS OFF) $pg_deliveries_claim FOR UPDATE SKIP LOCKED;
\echo '-- a partner''s next turn'
EXPLAIN (COSTS OFF) SELECT GREATEST(COALESCE((SELECT MAX(turn) FROM jobs WHERE status = 'in_progress'), 0),
  COALESCE((SELECT MAX(turn) FROM jobs WHERE partner_id = md5('p7')::uuid AND status = 'queued'), 0)) + 1;
SQL
fi
