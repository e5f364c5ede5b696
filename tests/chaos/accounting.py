"""What became of a run's prompt tasks and trajectories, checked independently of the trainer's own event log
(which `searchrl audit` replays):

- `StreamTap` follows the `prompts` and `trajectories` streams with plain XREAD (no consumer group, so it changes
  nothing) and records every task issued and every trajectory written, before the services' acks delete them.
- `account()` adds `<run_dir>/metrics.jsonl`, the dead-letter streams (`*:dead`) and what Redis still holds in
  flight at the end, and `Accounting.problems()` states every breach:
  - the step numbers must increase strictly and end at `max_steps` (a repeated number is committed training a
    restart rolled back, reported again);
  - trained twice: the steps (the last line of each step number) trained more trajectories than distinct ones
    were ever written -- some copy was trained beside its original;
  - lost: a task issued whose group was never completely written and which no dead-letter stream holds;
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

from searchrl.config import Config
from searchrl.redisio import connect


def _meta(fields: dict[bytes, bytes]) -> dict:
    try:
        meta = json.loads(fields.get(b"meta", b"{}"))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


class StreamTap(threading.Thread):
    """Records task ids (with group sizes) from `prompts` and trajectory ids from `trajectories` as they are
    written; survives Redis restarts (it reconnects and goes on from the last ids it saw)."""

    def __init__(self, url: str, prompts: str, trajectories: str) -> None:
        super().__init__(name="stream-tap", daemon=True)
        self.url, self.prompts, self.trajectories = url, prompts, trajectories
        self.issued: dict[str, int] = {}  # task id -> group size
        self.written: dict[str, set[int]] = defaultdict(set)  # task id -> sample indexes
        self._done = threading.Event()

    def run(self) -> None:
        last = {self.prompts: "0-0", self.trajectories: "0-0"}
        r = connect(self.url)
        while not self._done.is_set():
            try:
                resp = r.xread(last, count=1000, block=200)
            except redis.ConnectionError:
                self._done.wait(0.2)
                continue
            for stream, entries in resp or []:
                name = stream.decode()
                for eid, fields in entries:
                    last[name] = eid.decode()
                    self._record(name, _meta(fields))
        r.close()

    def _record(self, stream: str, meta: dict) -> None:
        task = str(meta.get("task_id", ""))
        if stream == self.prompts:
            self.issued[task] = meta.get("group_size")  # type: ignore[assignment]
        elif isinstance(meta.get("sample_index"), int):
            self.written[task].add(meta["sample_index"])

    def complete(self) -> set[str]:
        """Tasks whose whole group has been written."""
        issued = list(self.issued.items())
        return {t for t, n in issued if isinstance(n, int) and len(self.written.get(t, ())) >= n}

    def stop(self) -> None:
        self._done.set()
        self.join(5)


@dataclass
class Accounting:
    steps: list[int]
    lineage_trained: int  # trajectories of the last line of each step number
    written: int  # distinct trajectory ids ever written
    lost: list[str]
    in_flight: dict[str, int]
    dead: set[str]  # task / trajectory ids in the dead-letter streams
    non_finite: list[str] = field(default_factory=list)

    @property
    def redone_steps(self) -> list[int]:
        return [b for a, b in zip(self.steps, self.steps[1:], strict=False) if b <= a]

    @property
    def trained_twice(self) -> int:
        return max(self.lineage_trained - self.written, 0)

    def problems(self, max_steps: int) -> list[str]:
        out = []
        if not self.steps or self.steps[-1] != max_steps:
            out.append(
                f"metrics.jsonl ends at step {self.steps[-1] if self.steps else None}, not {max_steps}"
            )
        if self.redone_steps:
            out.append(
                f"step numbers in metrics.jsonl not strictly increasing (redone: {self.redone_steps}): "
                f"{self.steps}"
            )
        if self.trained_twice:
            out.append(
                f"trained twice: the steps trained {self.lineage_trained} trajectories, only {self.written} "
                "distinct ones were ever written"
            )
        if self.lost:
            out.append(
                f"lost: {len(self.lost)} task(s) issued, never completely written nor dead-lettered: "
                f"{self.lost[:6]}"
            )
        if any(self.in_flight.values()):
            out.append(f"still in flight after the run: {self.in_flight}")
        if self.non_finite:
            out.append(f"non-finite values in metrics.jsonl: {self.non_finite[:6]}")
        return out


def dead_letters(r: redis.Redis) -> set[str]:
    """Task and trajectory ids held by the dead-letter streams (`*:dead`)."""
    ids: set[str] = set()
    for key in r.scan_iter(match="*:dead", _type="stream"):
        for _eid, fields in r.xrange(key):
            ids.update(str(v) for k, v in _meta(fields).items() if k in ("task_id", "traj_id"))
    return ids


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
    lineage = {int(m["step"]): int(m.get("trajectories", 0)) for m in metrics}  # later lines win
    dead = dead_letters(r)
    return Accounting(
        steps=[int(m["step"]) for m in metrics],
        lineage_trained=sum(lineage.values()),
        written=sum(len(s) for s in tap.written.values()),
        lost=sorted(set(tap.issued) - tap.complete() - dead),
        in_flight=_in_flight(r, cfg),
        dead=dead,
        non_finite=_non_finite(metrics),
    )
