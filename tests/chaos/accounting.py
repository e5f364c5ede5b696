"""What became of a run's prompt tasks and trajectories, checked independently of the trainer's own event log
(which `searchrl audit` replays):

- `StreamTap` follows the `prompts` and `trajectories` streams with plain XREAD (no consumer group, so it changes
  nothing) and records every task issued and every trajectory written (first copy of each id), before the
  services' acks delete them.
- `account()` adds `<run_dir>/metrics.jsonl`, the dead-letter streams (`*:dead`) and what Redis still holds in
  flight at the end, and `Accounting.problems()` states every breach:
  - the step numbers must increase strictly and end at `max_steps`;
  - the steps' totals (trajectories, response tokens, generation seconds; the last line of each step number)
    must equal the totals of the complete groups written (first copies): more is a copy trained beside its
    original (trained twice), less is written data that never reached the final weights (lost; e.g. a step
    rolled back by a restart and not trained again). Generation seconds are as good as a fingerprint, so a step
    trained on a copy instead of another group does not balance either. When the trainer dropped groups
    (metrics' `dropped_groups`: stale, malformed, ...) only the count is checked: written = trained + dropped
    at most;
  - lost tasks: issued, never completely written, not in a dead-letter stream;
  - in flight at the end: entries pending in either consumer group, tasks still outstanding;
  - non-finite numbers in metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from searchrl.config import Config


def _meta(fields: dict[bytes, bytes]) -> dict:
    try:
        meta = json.loads(fields.get(b"meta", b"{}"))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


@dataclass(frozen=True)
class Totals:
    """Trajectories, response tokens and generation seconds summed over a set of trajectories."""

    n: int = 0
    tokens: int = 0
    generate_s: float = 0.0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.n + other.n, self.tokens + other.tokens, self.generate_s + other.generate_s)

    def same(self, other: Totals) -> bool:
        return (self.n, self.tokens) == (other.n, other.tokens) and math.isclose(
            self.generate_s, other.generate_s, rel_tol=1e-6, abs_tol=1e-6
        )

    def __str__(self) -> str:
        return f"{self.n} trajectories, {self.tokens} response tokens, {self.generate_s:.4f} s generating"


def step_totals(m: dict) -> Totals:
    """The totals of one metrics.jsonl line."""
    n = int(m["trajectories"])
    return Totals(n, round(float(m["response_len_mean"]) * n), float(m["generate_s"]))


class StreamTap(threading.Thread):
    """Records tasks (with group sizes) from `prompts` and the first copy of every trajectory from
    `trajectories` as they are written; survives Redis restarts (it reconnects and goes on from the last ids)."""

    def __init__(self, url: str, prompts: str, trajectories: str) -> None:
        super().__init__(name="stream-tap", daemon=True)
        self.url, self.prompts, self.trajectories = url, prompts, trajectories
        self.issued: dict[str, object] = {}  # task id -> group size (as written, poison included)
        self.written: dict[str, dict[int, Totals]] = defaultdict(dict)  # task id -> sample index -> totals
        self._done = threading.Event()

    def run(self) -> None:
        last = {self.prompts: "0-0", self.trajectories: "0-0"}
        # No client-side retry with backoff (`searchrl.redisio.connect` waits up to 10 s between tries): after a
        # Redis restart the tap must be back within 0.2 s, before the trainer can checkpoint and XDEL entries
        # written meanwhile, or it would miss them and count their groups as lost.
        r = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), socket_timeout=5.0)
        while not self._done.is_set():
            try:
                resp = r.xread(last, count=1000, block=200)
            except (redis.ConnectionError, redis.TimeoutError):
                self._done.wait(0.2)
                continue
            for stream, entries in resp or []:
                name = stream.decode()
                for eid, fields in entries:
                    last[name] = eid.decode()
                    self._record(name, fields)
        r.close()

    def _record(self, stream: str, fields: dict[bytes, bytes]) -> None:
        meta = _meta(fields)
        task, i = str(meta.get("task_id", "")), meta.get("sample_index")
        if stream == self.prompts:
            self.issued[task] = meta.get("group_size")
        elif isinstance(i, int) and i not in self.written[task]:
            gen = (meta.get("metrics") or {}).get("generate_s", 0.0)
            self.written[task][i] = Totals(1, len(fields.get(b"response_ids", b"")) // 4, float(gen))

    def complete(self) -> set[str]:
        """Tasks whose whole group has been written."""
        issued = list(self.issued.items())
        return {t for t, n in issued if isinstance(n, int) and len(self.written.get(t, {})) >= n}

    def stop(self) -> None:
        self._done.set()
        self.join(5)


@dataclass
class Accounting:
    steps: list[int]
    trained: Totals  # the last metrics line of each step number
    written: Totals  # complete groups (first copies)
    group_size: int
    dropped_groups: int
    lost_tasks: list[str]
    in_flight: dict[str, int]
    dead: set[str]  # task ids in the dead-letter streams
    non_finite: list[str] = field(default_factory=list)

    @property
    def trained_twice(self) -> int:
        """Groups trained beyond the written ones (rounded up)."""
        return math.ceil(max(self.trained.n - self.written.n, 0) / self.group_size)

    @property
    def untrained(self) -> int:
        """Written trajectories neither in the final weights' steps nor covered by the trainer's dropped groups."""
        return max(self.written.n - self.trained.n - self.dropped_groups * self.group_size, 0)

    @property
    def lost(self) -> int:
        """Tasks lost: never completely written, or written and neither trained nor dropped (groups, rounded up)."""
        return len(self.lost_tasks) + math.ceil(self.untrained / self.group_size)

    def problems(self, max_steps: int) -> list[str]:
        out = []
        if not self.steps or self.steps[-1] != max_steps:
            out.append(
                f"metrics.jsonl ends at step {self.steps[-1] if self.steps else None}, not {max_steps}"
            )
        redone = [b for a, b in zip(self.steps, self.steps[1:], strict=False) if b <= a]
        if redone:
            out.append(
                f"step numbers in metrics.jsonl not strictly increasing (again: {redone}): {self.steps}"
            )
        balanced = self.trained.same(self.written) if not self.dropped_groups else not self.untrained
        if self.trained.n > self.written.n or not balanced:
            out.append(
                f"trained data do not balance (a copy trained beside its original, or written groups missing from "
                f"the final weights): the steps trained {self.trained}; the complete groups written come to "
                f"{self.written}"
            )
        if self.lost_tasks:
            out.append(
                f"lost: {len(self.lost_tasks)} task(s) issued, never completely written nor dead-lettered: "
                f"{self.lost_tasks[:6]}"
            )
        if any(self.in_flight.values()):
            out.append(f"still in flight after the run: {self.in_flight}")
        if self.non_finite:
            out.append(f"non-finite values in metrics.jsonl: {self.non_finite[:6]}")
        return out


def dead_letters(r: redis.Redis) -> set[str]:
    """Task ids of the entries in the dead-letter streams (`*:dead`: prompt tasks and trajectories)."""
    return {
        str(_meta(fields).get("task_id"))
        for key in r.scan_iter(match="*:dead", _type="stream")
        for _eid, fields in r.xrange(key)
    }


def _in_flight(r: redis.Redis, cfg: Config) -> dict[str, int]:
    s = cfg.streams
    out = {f"{s.key_prefix}:outstanding": int(r.hlen(f"{s.key_prefix}:outstanding"))}
    for stream, group in ((s.prompts, "rollout"), (s.trajectories, "trainer")):
        out[f"pending {stream}/{group}"] = int(r.xpending(stream, group)["pending"])
    return out


def _non_finite(metrics: list[dict]) -> list[str]:
    return [
        f"step {m.get('step')}: {k}"
        for m in metrics
        for k, v in m.items()
        if isinstance(v, float) and not math.isfinite(v)
    ]


def account(r: redis.Redis, cfg: Config, run_dir: Path, tap: StreamTap) -> Accounting:
    path = run_dir / "metrics.jsonl"
    metrics = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    lineage = {int(m["step"]): step_totals(m) for m in metrics}  # a later line of a step number wins
    dead = dead_letters(r)
    return Accounting(
        steps=[int(m["step"]) for m in metrics],
        trained=sum(lineage.values(), Totals()),
        written=sum((t for task in tap.complete() for t in tap.written[task].values()), Totals()),
        group_size=cfg.trainer.group_size,
        dropped_groups=int(metrics[-1].get("dropped_groups", 0)) if metrics else 0,
        lost_tasks=sorted(set(tap.issued) - tap.complete() - dead),
        in_flight=_in_flight(r, cfg),
        dead=dead,
        non_finite=_non_finite(metrics),
    )
