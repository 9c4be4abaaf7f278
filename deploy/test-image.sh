#!/usr/bin/env bash
# Builds the CPU image (deploy/Dockerfile) with podman and proves it as deployed: `migrate`,
# then two API containers and one worker container on PostgreSQL and an S3-protocol server
# (moto), jobs through both APIs, scored with ONNX Runtime inside the worker, signed webhooks
# verified by a receiver on the host, `platescore healthcheck` green, processes not root,
# and SIGTERM draining with exit status 0, also right after a start, with every job enqueued
# around the stop finished (by the next worker if the stopping one released it).
#
#   .ci/with-postgres deploy/test-image.sh
#
# IMAGE_BASES=local (the default here) builds on base images made on this machine, because
# no container registry is reachable from it: Debian bookworm from Debian's packages with
# debootstrap, and for the build stage the same plus this machine's Rust toolchain.
# IMAGE_BASES=public uses the Dockerfile's defaults (rust:1.95-bookworm, debian:bookworm-slim).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PLATESCORE_TEST_DATABASE_URL:?run under .ci/with-postgres}"
IMAGE=${IMAGE:-localhost/platescore:test}
IMAGE_BASES=${IMAGE_BASES:-local}
TOOLS=${PLATESCORE_TOOLS_DIR:-$PWD/target/tools}
LOCAL_DEBIAN=localhost/platescore-base/debian:bookworm-slim
LOCAL_RUST=localhost/platescore-base/rust:1.95-bookworm
JOBS_PER_API=4

step() { printf '\n--- %s\n' "$*"; }
fail() { echo "test-image: FAILED: $*" >&2; exit 1; }
# crun fails on these machines (cgroups v1, rlimits); runc works. Without systemd, podman
# cannot schedule HEALTHCHECK timers and says so on every start and stop: drop that line.
pm() {
  podman --runtime runc --cgroup-manager=cgroupfs "$@" \
    2> >(grep -v 'unable to get systemd connection' >&2)
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.5
  done
}

install_tools() {
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    step "installing podman, runc and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq podman runc debootstrap >/dev/null
  fi
  # The default ulimits podman asks for are refused in these sandboxes.
  if [ ! -f /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n' >/etc/containers/containers.conf
  fi
  if [ ! -x "$TOOLS/image-test-venv/bin/moto_server" ]; then
    python3 -m venv "$TOOLS/image-test-venv"
    "$TOOLS/image-test-venv/bin/pip" install -q 'moto[server]==5.2.5' 'boto3==1.44.8'
  fi
}

# Bases made from Debian's packages. They carry this machine's apt sources and the
# certificate authorities it trusts, as a site's own base images would.
make_local_bases() {
  if ! pm image exists "$LOCAL_DEBIAN"; then
    step "making $LOCAL_DEBIAN with debootstrap"
    local rootfs
    rootfs=$(mktemp -d /tmp/platescore-rootfs.XXXXXX)
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
      rm -f "$rootfs/etc/apt/sources.list"
    fi
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | pm import - "$LOCAL_DEBIAN" >/dev/null
    rm -rf "$rootfs"
  fi
  if ! pm image exists "$LOCAL_RUST"; then
    step "making $LOCAL_RUST from $LOCAL_DEBIAN and this machine's Rust $(rustc --version | cut -d' ' -f2)"
    local context
    context=$(mktemp -d /tmp/platescore-rust-base.XXXXXX)
    cp -a "$(rustc --print sysroot)" "$context/rust"
    rm -rf "$context/rust/share/doc"
    cat >"$context/Containerfile" <<EOF
FROM $LOCAL_DEBIAN
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev binutils make pkg-config ca-certificates && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    pm build --network host -q -t "$LOCAL_RUST" "$context" >/dev/null
    rm -rf "$context"
  fi
}

build_image() {
  local bases=()
  if [ "$IMAGE_BASES" = local ]; then
    make_local_bases
    bases=(--build-arg "RUST_IMAGE=$LOCAL_RUST" --build-arg "RUNTIME_IMAGE=$LOCAL_DEBIAN")
  fi
  step "building $IMAGE (bases: $IMAGE_BASES)"
  local started=$SECONDS
  # Docker format keeps the HEALTHCHECK (the OCI format has no field for it).
  pm build --network host --format docker "${bases[@]}" \
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -f deploy/Dockerfile -t "$IMAGE" . >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log"; fail "the image did not build"; }
  build_seconds=$((SECONDS - started))
  echo "built in $build_seconds s; $(pm image inspect --format '{{.Size}}' "$IMAGE" |
    awk '{printf "%.0f MB", $1 / 1e6}')"
  [ "$(pm image inspect --format '{{index .Labels "org.opencontainers.image.title"}}' "$IMAGE")" = platescore ] ||
    fail "OCI labels missing"
  pm image inspect --format '{{.Config.Healthcheck.Test}}' "$IMAGE" | grep -q 'platescore healthcheck' ||
    fail "the image has no HEALTHCHECK running platescore healthcheck"
}

containers=()
cleanup() {
  local status=$?
  set +e # everything below is best effort; the status is the script's
  if [ "$status" != 0 ]; then
    for name in "${containers[@]}"; do
      echo "=== logs of $name" >&2
      pm logs "$name" 2>&1 | tail -n 30 >&2 || true
    done
  fi
  for name in "${containers[@]}"; do
    pm rm -f "$name" >/dev/null 2>&1 || true
    pm volume rm -f "$name-data" >/dev/null 2>&1 || true
  done
  for pid in "${locker_pid:-}" "${receiver_pid:-}" "${s3_pid:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
  rm -rf "$work"
  exit "$status"
}

work=$(mktemp -d /tmp/platescore-image-test.XXXXXX)
trap cleanup EXIT
install_tools
build_image

step "an S3-protocol server (moto) and a webhook receiver on the host"
s3_port=$(free_port)
"$TOOLS/image-test-venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$work/s3.log" 2>&1 &
s3_pid=$!
wait_for 30 "the S3 server" curl -sf "http://127.0.0.1:$s3_port/moto-api/"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$TOOLS/image-test-venv/bin/python" -c "
import boto3
boto3.client('s3', endpoint_url='http://127.0.0.1:$s3_port', region_name='us-east-1').create_bucket(Bucket='meal-photos')"

receiver_port=$(free_port)
# Verifies each delivery's Standard Webhooks signature with the endpoint's secret (read
# from a file once the endpoint exists), then records `job_id status verified` per line.
python3 - "$receiver_port" "$work/secret" "$work/received" >"$work/receiver.log" 2>&1 <<'PY' &
import base64, hashlib, hmac, http.server, json, sys
port, secret_file, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        secret = base64.b64decode(open(secret_file).read().strip().removeprefix("whsec_"))
        signed = f'{self.headers["webhook-id"]}.{self.headers["webhook-timestamp"]}.'.encode() + body
        expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
        given = [s.split(",", 1)[1] for s in self.headers["webhook-signature"].split()]
        job = json.loads(body)
        with open(out, "a") as f:
            f.write(f'{job["job_id"]} {job["status"]} {expected in given}\n')
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()
PY
receiver_pid=$!

env=(
  -e "DATABASE_URL=$PLATESCORE_TEST_DATABASE_URL"
  -e "PLATESCORE_OBJECT_STORE=s3://meal-photos/image-test"
  -e "PLATESCORE_S3_ENDPOINT_URL=http://127.0.0.1:$s3_port"
  -e PLATESCORE_S3_FORCE_PATH_STYLE=true
  -e PLATESCORE_S3_ACCESS_KEY_ID=test
  -e PLATESCORE_S3_SECRET_ACCESS_KEY=test
  -e PLATESCORE_MIGRATE_ON_START=false
  -e PLATESCORE_OUTBOUND_ALLOW_CIDRS=127.0.0.0/8
  -e PLATESCORE_POLL_INTERVAL_MS=200
)
step "migrate, and the first admin key from \`partners create\`"
pm run --rm --network host "${env[@]}" -e RUST_LOG=warn "$IMAGE" migrate
key=$(pm run --rm --network host "${env[@]}" -e RUST_LOG=warn "$IMAGE" partners create image-test --admin)
[[ $key == psk_* ]] || fail "no key from partners create"

start_node() { # start_node NAME ROLE PORT [podman run options...]
  local name=$1 role=$2 port=$3
  shift 3
  containers+=("$name")
  # As Kubernetes runs it: a read-only root, /tmp in memory, /data a volume.
  pm run -d --name "$name" --network host --read-only --tmpfs /tmp -v "$name-data:/data" \
    "${env[@]}" -e "PLATESCORE_LISTEN=0.0.0.0:$port" "$@" "$IMAGE" serve --role "$role" >/dev/null
}
ready() { curl -sf "http://127.0.0.1:$1/health/ready"; }
suffix=$$
api1_port=$(free_port) api2_port=$(free_port) worker_port=$(free_port)
step "two API containers and a worker container"
start_node "ps-api-1-$suffix" api "$api1_port"
start_node "ps-api-2-$suffix" api "$api2_port"
start_node "ps-worker-$suffix" worker "$worker_port"
for port in "$api1_port" "$api2_port" "$worker_port"; do
  wait_for 120 "readiness on port $port" ready "$port"
done
runtime=$(ready "$worker_port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["runtime"])')
echo "the worker reports runtime=$runtime"
[ "$runtime" = ort-cpu ] || fail "the worker scores with $runtime, not ONNX Runtime"

for name in "ps-api-1-$suffix" "ps-worker-$suffix"; do
  pm exec "$name" platescore healthcheck >/dev/null || fail "healthcheck in $name"
  # shellcheck disable=SC2016 # awk's $2, not the shell's
  uid=$(pm exec "$name" awk '/^Uid:/ {print $2}' /proc/1/status)
  [ "$uid" != 0 ] || fail "$name runs as root"
done
health=$(pm healthcheck run "ps-api-1-$suffix" 2>&1 && echo healthy) || true
echo "healthcheck: green in both; process uid $uid; podman healthcheck run: ${health:-not supported here}"

step "jobs through both APIs"
secret=$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d "{\"url\":\"http://127.0.0.1:$receiver_port/hook\"}" "http://127.0.0.1:$api1_port/webhooks" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
echo "$secret" >"$work/secret"
: >"$work/received"
enqueue() { # enqueue PORT N → job id
  local photos=(tests/fixtures/apple.jpg tests/fixtures/lemon.jpg tests/fixtures/pizza.jpg tests/fixtures/cabbage.jpg)
  cat "${photos[$(($2 % 4))]}" <(printf 'image test %s %s' "$suffix" "$2") >"$work/photo.jpg"
  curl -sf -H "Authorization: Bearer $key" -F "image=@$work/photo.jpg;type=image/jpeg" \
    "http://127.0.0.1:$1/enqueue" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])'
}
jobs=()
for i in $(seq 1 "$JOBS_PER_API"); do
  jobs+=("$(enqueue "$api1_port" "$i")" "$(enqueue "$api2_port" "$((i + 100))")")
done
delivered() { [ "$(cut -d' ' -f1 "$work/received" | sort -u | wc -l)" -ge "$1" ]; }
all_verified_successes() {
  if grep -qv ' succeeded True$' "$work/received"; then
    cat "$work/received"
    fail "a webhook was not a verified success"
  fi
}
wait_for 180 "${#jobs[@]} webhooks" delivered "${#jobs[@]}"
all_verified_successes
for job in "${jobs[@]}"; do
  grep -q "^$job " "$work/received" || fail "no webhook for $job"
  status=$(curl -sf -H "Authorization: Bearer $key" "http://127.0.0.1:$api2_port/status/$job" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["status"], j["result"]["rating"])')
  [[ $status == "succeeded "[1-5] ]] || fail "job $job: $status"
done
echo "${#jobs[@]} jobs scored; every webhook arrived, signed"

step "SIGTERM drains: exit status 0, nothing lost"
more=()
for i in $(seq 1 6); do more+=("$(enqueue "$api1_port" "$((i + 200))")"); done
stop_and_check() {
  pm stop --time 60 "$1" >/dev/null
  local code
  code=$(pm inspect --format '{{.State.ExitCode}}' "$1")
  [ "$code" = 0 ] || fail "$1 exited with $code after SIGTERM"
}
stop_and_check "ps-worker-$suffix"
pm logs "ps-worker-$suffix" 2>&1 | grep -q '"shutting down"' || fail "the worker did not log its drain"
start_node "ps-worker-2-$suffix" worker "$worker_port"
wait_for 120 "the second worker" ready "$worker_port"
wait_for 180 "the jobs enqueued around the stop" delivered "$((${#jobs[@]} + ${#more[@]}))"
all_verified_successes
echo "the ${#more[@]} jobs enqueued around the stop all finished"

step "peak memory (VmHWM) of each process"
for name in "ps-api-1-$suffix" "ps-api-2-$suffix" "ps-worker-2-$suffix"; do
  # shellcheck disable=SC2016 # awk's $2, not the shell's
  echo "$name: $(pm exec "$name" awk '/^VmHWM:/ {printf "%.0f MB", $2 / 1024}' /proc/1/status)"
done

step "SIGTERM while starting: the process is PID 1, which loses signals it has no handler for"
# Hold the migrations' advisory lock (AdvisoryLock::Migrations in src/store/mod.rs), so that a
# node migrating on start waits in the middle of its start; stop it there, then let it go.
migrations_lock=8100956980576780289
psql "$PLATESCORE_TEST_DATABASE_URL" -qc "SELECT pg_advisory_lock($migrations_lock), pg_sleep(600)" \
  >/dev/null 2>&1 &
locker_pid=$!
advisory_locks() { # advisory_locks GRANTED(true|false) COUNT
  [ "$(psql "$PLATESCORE_TEST_DATABASE_URL" -tAc \
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = $1")" -ge "$2" ]
}
wait_for 30 "the lock" advisory_locks true 1
start_node "ps-worker-3-$suffix" worker "$(free_port)" -e PLATESCORE_MIGRATE_ON_START=true
wait_for 60 "the third worker to wait for the lock" advisory_locks false 1
pm kill --signal TERM "ps-worker-3-$suffix" >/dev/null
sleep 1
psql "$PLATESCORE_TEST_DATABASE_URL" -qtAc \
  "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted" >/dev/null
exited() { [ "$(pm inspect --format '{{.State.Status}}' "$1")" = exited ]; }
wait_for 60 "the third worker to finish starting and drain" exited "ps-worker-3-$suffix"
code=$(pm inspect --format '{{.State.ExitCode}}' "ps-worker-3-$suffix")
[ "$code" = 0 ] || fail "a worker stopped while starting exited with $code"
echo "stopped while it waited to migrate: it finished starting, drained and exited 0"

step "SIGTERM drains the rest"
for name in "ps-worker-2-$suffix" "ps-api-1-$suffix" "ps-api-2-$suffix"; do
  stop_and_check "$name"
done
echo "test-image: OK in $SECONDS s (the image build: $build_seconds s)"
