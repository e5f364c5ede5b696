"""The trainer's side of the queue in Redis: which prompt tasks are in flight, which were trained in which step,
what a checkpoint covers, and the event log that `searchrl audit` replays.

Keys (all under `streams.key_prefix` P):
- `P:outstanding`   hash task id -> {"v": version issued, "t": unix time issued, "n": group size}: tasks issued and
                    not yet resolved (trained, dropped, expired or dead-lettered). Only trajectories of these tasks
                    are admitted: a late or duplicate copy of anything else is acked, deleted and counted.
- `P:uncommitted`   hash task id -> {"step", "n"}: tasks trained in a step that no checkpoint covers yet. Their
                    trajectory entries stay pending at the trainer until a checkpoint covers the step; a restore to
                    an older checkpoint moves them back to `P:outstanding`, so they are trained again.
- `P:events`        stream of JSON events (issue, train, drop, discard, checkpoint, restore), each written in the
                    same MULTI/EXEC as the state change it records; mirrored to `<run_dir>/events.jsonl` and
                    trimmed at each checkpoint, so Redis holds only the events since the last one.
- `P:run`           the run id that owns these keys (a second run on the same keys is refused).
- `P:failed`        (redisio.failed_key) tasks rollout workers dead-lettered; drained here.
- `P:policy_version`, `P:checkpoint_step`.

Every method is one Redis transaction (redis-py re-sends it after a dropped connection: every command in it is
idempotent except the event XADD, and the audit ignores a repeated event). This module knows nothing about the
learner or the training loop; it does no staleness or grouping logic.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from searchrl import redisio
from searchrl.config import StreamsConfig

GROUP = "trainer"
DEAD_SUFFIX = ":dead"
log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _wait_while_full(fn: F) -> F:
    """Re-run a write while Redis refuses it for lack of memory (maxmemory + noeviction, finding 9): the run
    pauses, visibly, until an operator frees memory or raises the limit, instead of crashing the trainer."""

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        delay = 1.0
        while True:
            try:
                return fn(*args, **kwargs)
            except redis.exceptions.OutOfMemoryError as e:
                log.error(
                    "Redis is full (maxmemory reached); retrying %s in %.0fs: %s", fn.__name__, delay, e
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    return inner  # type: ignore[return-value]


@dataclass(frozen=True)
class Issued:
    """One outstanding task: the version it was issued at, when (unix seconds), and its group size."""

    version: int
    issued_at: float
    group_size: int


def _j(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Ledger:
    def __init__(self, r: redis.Redis, streams: StreamsConfig, consumer: str) -> None:
        self.r, self.s, self.consumer = r, streams, consumer
        p = streams.key_prefix
        self.k_version = redisio.policy_version_key(p)
        self.k_outstanding = f"{p}:outstanding"
        self.k_uncommitted = f"{p}:uncommitted"
        self.k_events = f"{p}:events"
        self.k_run = f"{p}:run"
        self.k_ckpt = f"{p}:checkpoint_step"
        self.k_failed = redisio.failed_key(p)
        self.dead_stream = streams.trajectories + DEAD_SUFFIX

    # ---- ownership -------------------------------------------------------------------------------------------

    def claim_run(self, run_id: str, source: str) -> None:
        """Mark these keys as this run's; refuse keys another run owns (two runs would eat each other's data)."""
        self.r.set(self.k_run, run_id, nx=True)
        owner = self.r.get(self.k_run)
        owner = owner.decode() if isinstance(owner, bytes) else owner
        if owner != run_id:
            raise RuntimeError(
                f"{source}: streams.key_prefix {self.s.key_prefix!r} on this Redis belongs to run {owner}, not to "
                f"this run ({run_id}); give this run its own streams.key_prefix/streams.prompts/"
                "streams.trajectories (or Redis db), or delete the old run's keys"
            )

    # ---- reads -----------------------------------------------------------------------------------------------

    def outstanding(self) -> dict[str, Issued]:
        out = {}
        for k, v in self.r.hgetall(self.k_outstanding).items():
            d = json.loads(v)
            out[k.decode()] = Issued(int(d["v"]), float(d["t"]), int(d["n"]))
        return out

    def uncommitted(self) -> dict[str, tuple[int, int]]:
        """task id -> (step, group size) of tasks trained since the last checkpoint."""
        out = {}
        for k, v in self.r.hgetall(self.k_uncommitted).items():
            d = json.loads(v)
            out[k.decode()] = (int(d["step"]), int(d["n"]))
        return out

    def announced_version(self) -> int:
        return int(self.r.get(self.k_version) or 0)

    def drain_failed(self) -> dict[str, str]:
        """Tasks the workers dead-lettered since the last call (read and cleared atomically)."""
        with self.r.pipeline(transaction=True) as p:
            p.hgetall(self.k_failed)
            p.delete(self.k_failed)
            got, _ = p.execute()
        return {k.decode(): v.decode(errors="replace") for k, v in got.items()}

    # ---- writes ----------------------------------------------------------------------------------------------

    @_wait_while_full
    def issue(self, tasks: list, version: int) -> None:  # list[PromptTask]
        """Queue prompt tasks and record them as outstanding."""
        now = time.time()
        with self.r.pipeline(transaction=True) as p:
            for t in tasks:
                p.hset(self.k_outstanding, t.task_id, _j({"v": version, "t": now, "n": t.group_size}))
                p.xadd(self.s.prompts, t.encode(), maxlen=self.s.maxlen, approximate=True)
            p.xadd(
                self.k_events, {"e": _j({"ev": "issue", "tasks": [t.task_id for t in tasks], "v": version})}
            )
            p.execute()

    @_wait_while_full
    def drop(self, tasks: Iterable[str], reason: str, eids: Iterable[str] = ()) -> None:
        """Resolve tasks without training them (stale, expired, dead-lettered, malformed, failed step): forget them,
        ack and delete their entries, record why."""
        tasks, eids = sorted(set(tasks)), list(eids)
        if not tasks and not eids:
            return
        with self.r.pipeline(transaction=True) as p:
            if tasks:
                p.hdel(self.k_outstanding, *tasks)
            self._ack_delete(p, eids)
            p.xadd(self.k_events, {"e": _j({"ev": "drop", "tasks": tasks, "reason": reason[:500]})})
            p.execute()

    @_wait_while_full
    def discard(self, eid: str, reason: str, traj_id: str = "", fields: dict | None = None) -> None:
        """Ack and delete one entry that belongs to no outstanding task (a late or duplicate copy, or garbage);
        malformed ones are copied to `<trajectories>:dead` with the error."""
        with self.r.pipeline(transaction=True) as p:
            if fields is not None:
                dead = {
                    **{k: v for k, v in fields.items() if k not in (b"error", "error")},
                    "error": reason[:500],
                }
                p.xadd(self.dead_stream, dead, maxlen=self.s.maxlen, approximate=True)
            self._ack_delete(p, [eid])
            p.xadd(self.k_events, {"e": _j({"ev": "discard", "traj": traj_id, "reason": reason[:500]})})
            p.execute()

    @_wait_while_full
    def commit_step(self, step: int, version: int, groups: list[tuple[str, int]]) -> None:
        """After an optimizer step: the step's tasks (task id, group size) move from outstanding to uncommitted,
        and the new version is announced. Their entries stay pending until a checkpoint covers `step`."""
        with self.r.pipeline(transaction=True) as p:
            for task, n in groups:
                p.hset(self.k_uncommitted, task, _j({"step": step, "n": n}))
            p.hdel(self.k_outstanding, *[t for t, _ in groups])
            p.set(self.k_version, version)
            event = {"ev": "train", "step": step, "v": version, "tasks": [t for t, _ in groups]}
            p.xadd(self.k_events, {"e": _j(event)})
            p.execute()

    @_wait_while_full
    def commit_checkpoint(self, step: int, eids: list[str], tasks: list[str]) -> None:
        """A checkpoint of `step` is on disk: ack and delete the entries of the steps it covers. The deletions
        go first, on their own: they free memory and Redis allows them even when it is full."""
        with self.r.pipeline(transaction=True) as p:
            self._ack_delete(p, eids)
            if tasks:
                p.hdel(self.k_uncommitted, *tasks)
            p.execute()
        with self.r.pipeline(transaction=True) as p:
            p.set(self.k_ckpt, step)
            p.xadd(self.k_events, {"e": _j({"ev": "checkpoint", "step": step})})
            p.execute()

    @_wait_while_full
    def restore(self, step: int) -> list[str]:
        """After loading the checkpoint of `step` (0 = none): tasks trained later go back to outstanding (their
        entries are still pending at the trainer, so they are trained again); earlier ones are final. Returns
        the rolled-back task ids."""
        unc = self.uncommitted()
        back = {t: n for t, (s, n) in unc.items() if s > step}
        now = time.time()
        with self.r.pipeline(transaction=True) as p:
            for t, n in back.items():
                p.hset(self.k_outstanding, t, _j({"v": 0, "t": now, "n": n}))
            if unc:
                p.hdel(self.k_uncommitted, *unc)
            p.set(self.k_ckpt, step)
            p.xadd(self.k_events, {"e": _j({"ev": "restore", "step": step, "rolled_back": sorted(back)})})
            p.execute()
        return sorted(back)

    @_wait_while_full
    def announce(self, version: int) -> None:
        self.r.set(self.k_version, version)

    def _ack_delete(self, p: redis.client.Pipeline, eids: list[str]) -> None:
        if eids:
            p.xack(self.s.trajectories, GROUP, *eids)
            if not self.s.keep_acked:
                p.xdel(self.s.trajectories, *eids)

    # ---- the event log on disk -------------------------------------------------------------------------------

    def mirror_events(self, path: Path) -> int:
        """Append the events Redis holds beyond the file's last one to `path` (fsync'd), then trim them from
        Redis. Safe to repeat after a crash at any point: the file's last id says where to continue."""
        last = last_event_id(path)
        start = f"({last}" if last else "-"
        entries = self.r.xrange(self.k_events, min=start, max="+")
        if entries:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                if f.tell() and not _ends_with_newline(path):
                    f.write("\n")  # a torn line from a crash mid-write stays a line of its own
                for eid, fields in entries:
                    ev = json.loads(fields[b"e"])
                    ev["id"] = eid.decode()
                    f.write(_j(ev) + "\n")
                f.flush()
                os.fsync(f.fileno())
            last = entries[-1][0].decode()
        if last:
            self.r.xtrim(self.k_events, minid=_next_id(last))
        return len(entries)


def last_event_id(path: Path) -> str:
    """Stream id of the last event in an events.jsonl ('' when none)."""
    if not path.is_file() or path.stat().st_size == 0:
        return ""
    with path.open("rb") as f:
        f.seek(max(path.stat().st_size - 65536, 0))
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    for ln in reversed(lines):
        try:
            return json.loads(ln)["id"]
        except (ValueError, KeyError):
            continue  # a torn last line after a crash mid-write
    return ""


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _next_id(eid: str) -> str:
    ms, seq = eid.split("-")
    return f"{ms}-{int(seq) + 1}"
