"""Fault-injection harness: a real redis-server (AOF on, password) on a fixed port and the four services as OS
processes (two rollout workers), each in its own process group so a fault hits the whole service (a worker's vLLM
engine core included).

- `RedisServer` can be stopped (SIGTERM: redis flushes the AOF and exits) and started again on the same port and
  directory; the AOF brings the streams back.
- `Cluster` starts `python -m searchrl.cli serve NAME -c <run_dir>/config.yaml` per service with the deployment
  wiring in the environment (SEARCHRL_REDIS_URL with the password, SEARCHRL_*_ADDR, SEARCHRL_TOKEN,
  SEARCHRL_CONSUMER=rollout-<i>), sends signals to a service's process group, restarts it on its ports (fixed,
  below the kernel's ephemeral range, so nobody takes them meanwhile), and fails fast with the log's tail when a
  service dies that the harness did not kill.

It knows nothing about any particular fault or about what a correct run looks like (see `accounting`).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import redis

from searchrl.config import Config, dump_config
from searchrl.grpcutil import wait_serving
from searchrl.launcher import Stack, rollout_status, trainer_status
from searchrl.proc import die_with_parent
from searchrl.proto import trainer_pb2
from searchrl.redisio import connect, redis_server_binary

T = TypeVar("T")

WORKERS = ("rollout-0", "rollout-1")
SERVICES = ("retriever", "reward", "trainer", *WORKERS)
PORT_KEYS = ("port", "health_port", "metrics_port")
# A rollout worker's data segment cap: far above what vLLM on the tiny model needs, far below the machine, so a
# poison task that makes a worker allocate without bound (group_size 10**9) ends in MemoryError, not the OOM killer.
WORKER_DATA_LIMIT = 12 << 30


class ServiceDied(RuntimeError):
    """A service exited although the harness did not stop it."""


class RedisServer:
    """redis-server with AOF (`appendfsync everysec`) and a password, restartable on the same port and directory
    (`searchrl.redisio.EmbeddedRedis` picks a new port and password on every start)."""

    def __init__(self, directory: Path, password: str) -> None:
        self.dir, self.password, self.port = directory, password, quiet_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        # The password goes in through stdin ("-": config from stdin), never in the command line.
        args = [redis_server_binary(), "-", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"requirepass {self.password}\n".encode())
        self.proc.stdin.close()
        client = connect(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()  # BusyLoadingError (AOF replay) is a ConnectionError
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        """SIGTERM: redis writes the AOF buffer and exits (what SHUTDOWN does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def quiet_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports below the kernel's ephemeral range (32768+), so that no outgoing
    connection or port-0 listener of another process can take one between now and a restart of our service."""
    out: list[int] = []
    for port in random.sample(range(20000, 32768), 400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError(f"no {n} free ports in 20000-32767")


def _limit_worker_memory() -> None:
    die_with_parent()
    resource.setrlimit(resource.RLIMIT_DATA, (WORKER_DATA_LIMIT, WORKER_DATA_LIMIT))


class Cluster:
    """The four services of one run as process groups; `down` holds the services the harness stopped itself."""

    def __init__(self, cfg: Config, redis_server: RedisServer, token: str) -> None:
        self.cfg, self.redis, self.token = cfg, redis_server, token
        self.run_dir = Path(cfg.run.run_dir)
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        cfg.security.bind_host = "127.0.0.1"
        ports = iter(quiet_ports(len(PORT_KEYS) * len(SERVICES)))
        # One config for all; each worker gets its own gRPC/health/metrics port and weights dir through --set.
        self.ports = {name: {key: next(ports) for key in PORT_KEYS} for name in SERVICES}
        for name in ("retriever", "reward", "trainer"):
            for key, port in self.ports[name].items():
                setattr(getattr(cfg, name), key, port)
            setattr(cfg.addresses, name, f"127.0.0.1:{self.ports[name]['port']}")
        cfg.addresses.rollout = [f"127.0.0.1:{self.ports[w]['port']}" for w in WORKERS]
        self.config_path = self.run_dir / "config.yaml"
        self.config_path.write_text(dump_config(cfg))  # no secret in it: Redis and token come from the env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.down: set[str] = set()
        self._logs: list[IO[bytes]] = []

    # ---- wiring ----------------------------------------------------------------------------------------------

    def address(self, name: str) -> str:
        if name in WORKERS:
            return self.cfg.addresses.rollout[WORKERS.index(name)]
        return getattr(self.cfg.addresses, name)

    def env(self, name: str = "") -> dict[str, str]:
        env = Stack(self.cfg, self.run_dir).env()
        env.update({"SEARCHRL_REDIS_URL": self.redis.url, "SEARCHRL_TOKEN": self.token})
        if name in WORKERS:
            env["SEARCHRL_CONSUMER"] = name
        return env

    def _command(self, name: str) -> list[str]:
        service = "rollout" if name in WORKERS else name
        cmd = [sys.executable, "-m", "searchrl.cli", "serve", service, "-c", str(self.config_path)]
        if name in WORKERS:
            for key, port in self.ports[name].items():
                cmd += ["--set", f"rollout.{key}={port}"]
            cmd += ["--set", f"rollout.weights_dir={self.run_dir / 'weights' / name}"]
        return cmd

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            self._command(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(name),
            start_new_session=True,
            preexec_fn=_limit_worker_memory if name in WORKERS else die_with_parent,
        )
        self.down.discard(name)

    def start_all(self, timeout: float = 900.0) -> None:
        for name in SERVICES:
            self.start(name)
        self.wait_serving(SERVICES, timeout)

    def wait_serving(self, names: tuple[str, ...], timeout: float = 600.0) -> None:
        def alive() -> bool:
            self.check()
            return True

        wait_serving([self.address(n) for n in names], self.cfg.security, timeout, alive=alive)

    def send(self, name: str, sig: signal.Signals) -> None:
        os.killpg(self.procs[name].pid, sig)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the service's process group and reap it; it counts as down until `start(name)`."""
        self.down.add(name)
        self.send(name, sig)
        self.procs[name].wait(60)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def stop_services(self, timeout: float = 60.0) -> None:
        """SIGTERM every running service (trainer last), then SIGKILL what is left after `timeout`."""
        running = [n for n in reversed(SERVICES) if n in self.procs and self.procs[n].poll() is None]
        self.down.update(running)
        for name in running:
            self.send(name, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.send(name, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in running:
            try:
                self.procs[name].wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.send(name, signal.SIGKILL)
                self.procs[name].wait()

    def close(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                self.down.add(name)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in self._logs:
            f.close()

    # ---- observation -----------------------------------------------------------------------------------------

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def check(self) -> None:
        """Raise ServiceDied for a service that exited on its own (crash), with its log's tail."""
        for name, p in self.procs.items():
            if name not in self.down and p.poll() is not None:
                raise ServiceDied(f"{name} exited with status {p.returncode}:\n{self.log_tail(name)}")

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float, period: float = 0.2) -> T:
        """Poll `probe` until it returns a value other than None/False; services must stay up meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            got = probe()
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s")
            time.sleep(period)

    def metrics_lines(self) -> list[str]:
        """The complete lines of metrics.jsonl (one per committed step; a restored trainer drops those of the
        steps it rolled back)."""
        path = self.run_dir / "metrics.jsonl"
        return [x for x in path.read_text().splitlines() if x.endswith("}")] if path.is_file() else []

    def committed(self) -> int:
        return len(self.metrics_lines())

    def wait_committed(self, n: int, timeout: float = 900.0) -> None:
        """Block until metrics.jsonl has `n` lines."""
        self.wait_until(f"{n} steps in metrics.jsonl", lambda: self.committed() >= n, timeout)

    def trainer_status(self) -> trainer_pb2.TrainerStatus:
        return trainer_status(self.address("trainer"), self.cfg.security)

    def consumer(self, worker: str) -> str:
        return rollout_status(self.address(worker), self.cfg.security).consumer

    def pending(self, stream: str, group: str) -> dict[str, int]:
        """Pending entries per consumer of `group` (XPENDING summary)."""
        r = connect(self.redis.url)
        try:
            info = r.xpending(stream, group)
        finally:
            r.close()
        return {c["name"].decode(): int(c["pending"]) for c in info.get("consumers") or []}
