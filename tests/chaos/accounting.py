"""What became of every prompt task and trajectory of a finished run, read independently of `searchrl audit` from
Redis (streams, ledger, dropped set, dead letters) and `<run_dir>/metrics.jsonl`.

- trained twice: trajectories the steps trained (sum of `trajectories` over metrics lines) beyond the distinct
  ids in the ledger: a copy trained in the same step as its original, or in a later one.
- lost: prompt tasks in the `prompts` stream that were neither trained, dropped as stale nor dead-lettered.
- dead-lettered: distinct task/trajectory ids held in any key whose name contains `dead` or `failed`
  (`prompts:dead`, `<prefix>:failed`, and whatever the trainer uses for poison trajectories).
- steps: the step numbers of metrics.jsonl in file order; after a restart they must go on increasing (a repeated
  number is committed training that a restart rolled back).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import redis

from searchrl.config import Config
from searchrl.redisio import ledger_key


@dataclass
class Accounting:
    steps: list[int]
    trained_trajectories: int  # summed over metrics lines
    ledger: set[str]
    issued: set[str]
    dead: set[str]
    lost: list[str]
    non_finite: list[str] = field(default_factory=list)  # "step N: key" of metrics values that are NaN/inf

    @property
    def trained_twice(self) -> int:
        return max(self.trained_trajectories - len(self.ledger), 0)

    @property
    def redone_steps(self) -> list[int]:
        """Step numbers that appear again after a later or equal step (rolled-back training)."""
        return [b for a, b in zip(self.steps, self.steps[1:], strict=False) if b <= a]

    def problems(self, max_steps: int) -> list[str]:
        out = []
        if not self.steps or self.steps[-1] != max_steps:
            out.append(
                f"metrics.jsonl ends at step {self.steps[-1] if self.steps else None}, not {max_steps}"
            )
        if self.redone_steps:
            out.append(f"step numbers not strictly increasing (rolled back and redone): {self.steps}")
        if self.trained_twice:
            out.append(
                f"trained twice: {self.trained_twice} trajectories ({self.trained_trajectories} trained over "
                f"the steps, {len(self.ledger)} distinct ids in the ledger)"
            )
        if self.lost:
            out.append(
                f"lost: {len(self.lost)} prompt task(s) neither trained, dropped nor dead-lettered: "
                f"{self.lost[:8]}"
            )
        if self.non_finite:
            out.append(f"non-finite metrics: {self.non_finite[:8]}")
        return out


def task_of(traj_id: str) -> str:
    return traj_id.rsplit("/", 1)[0]


def _ids_in_entry(fields: dict[bytes, bytes]) -> set[str]:
    """task_id/traj_id of a dead-letter stream entry (in its `meta` JSON or as plain fields)."""
    out: set[str] = set()
    for key in ("task_id", "traj_id"):
        if key.encode() in fields:
            out.add(fields[key.encode()].decode(errors="replace"))
    try:
        meta = json.loads(fields.get(b"meta", b"{}"))
    except ValueError:
        meta = {}
    if isinstance(meta, dict):
        out.update(str(meta[k]) for k in ("task_id", "traj_id") if k in meta)
    return out


def dead_lettered(r: redis.Redis) -> set[str]:
    """Ids held by dead-letter keys: stream entries' task/traj ids, hash fields, set and list members."""
    ids: set[str] = set()
    keys = {k for pattern in ("*dead*", "*failed*") for k in r.scan_iter(match=pattern)}
    for key in keys:
        kind = r.type(key).decode()
        if kind == "stream":
            for _eid, fields in r.xrange(key):
                ids |= _ids_in_entry(fields)
        elif kind == "hash":
            ids.update(k.decode() for k in r.hkeys(key))
        elif kind == "set":
            ids.update(m.decode() for m in r.smembers(key))
        elif kind == "list":
            ids.update(m.decode() for m in r.lrange(key, 0, -1))
    return ids


def _non_finite(metrics: list[dict]) -> list[str]:
    return [
        f"step {m.get('step')}: {k}"
        for m in metrics
        for k, v in m.items()
        if isinstance(v, float) and not math.isfinite(v)
    ]


def account(r: redis.Redis, cfg: Config, run_dir: Path) -> Accounting:
    path = run_dir / "metrics.jsonl"
    metrics = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    prefix = cfg.streams.key_prefix
    ledger = {m.decode() for m in r.smembers(ledger_key(prefix))}
    dropped = {m.decode() for m in r.smembers(f"{prefix}:dropped")}
    issued = set()
    for _eid, fields in r.xrange(cfg.streams.prompts):
        issued |= {i for i in _ids_in_entry(fields) if "/" not in i}
    dead = dead_lettered(r)
    settled = {task_of(t) for t in ledger | dropped} | {i if "/" not in i else task_of(i) for i in dead}
    return Accounting(
        steps=[int(m["step"]) for m in metrics],
        trained_trajectories=sum(int(m.get("trajectories", 0)) for m in metrics),
        ledger=ledger,
        issued=issued,
        dead=dead,
        lost=sorted(issued - settled),
        non_finite=_non_finite(metrics),
    )
