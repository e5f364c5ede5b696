"""`searchrl audit --run-dir D`: account for every prompt task of a run, from its event log and its Redis.

The trainer writes one event per state change, in the same Redis transaction as the change (see
`searchrl_trainer.ledger`), and mirrors them to `<run_dir>/events.jsonl` at each checkpoint. Replaying them gives
the lineage of the current weights: the tasks trained in each step, minus the steps a restore rolled back. Every
issued task must be exactly one of: trained once in that lineage, dropped (stale, expired, dead-lettered,
malformed, failed step; with the reason), or still in flight (outstanding, or trained after the last checkpoint).
Exit status 1 when a task was trained twice, resolved twice, or is unaccounted for; 0 otherwise.

`replay()` is pure; `collect()` reads Redis (the run's config, or SEARCHRL_REDIS_URL; a run of `searchrl up`
whose embedded Redis has stopped is reopened from its AOF in `<run_dir>/redis`) and the run dir.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from searchrl.config import Config


@dataclass
class Report:
    issued: int = 0
    trained: int = 0  # tasks in the lineage of the current weights
    trained_twice: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason kind -> tasks
    dead_lettered: dict[str, str] = field(default_factory=dict)  # task -> reason
    resolved_twice: list[str] = field(default_factory=list)  # trained in the lineage and dropped
    in_flight: int = 0
    unaccounted: list[str] = field(default_factory=list)
    never_issued: list[str] = field(default_factory=list)  # trained or dropped, but no issue event
    discarded_entries: dict[str, int] = field(default_factory=dict)  # late / duplicate / malformed entries
    rolled_back_steps: int = 0
    restores: int = 0
    committed_step: int = 0  # newest step of the lineage
    checkpoint_step: int = 0  # newest checkpoint on disk
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.trained_twice or self.resolved_twice or self.unaccounted or self.never_issued)


def replay(events: list[dict], in_flight: set[str]) -> Report:
    """Account for tasks from the ordered, de-duplicated events and the tasks Redis still holds in flight."""
    rep = Report()
    issued: set[str] = set()
    lineage: dict[int, list[str]] = {}
    dropped: dict[str, str] = {}
    discarded: Counter[str] = Counter()
    for ev in events:
        kind = ev.get("ev")
        if kind == "issue":
            issued.update(ev["tasks"])
        elif kind == "train":
            lineage[int(ev["step"])] = list(ev["tasks"])  # a re-sent transaction repeats the same step
        elif kind == "restore":
            gone = [s for s in lineage if s > int(ev["step"])]
            rep.rolled_back_steps += len(gone)
            rep.restores += 1
            for s in gone:
                del lineage[s]
        elif kind == "drop":
            for t in ev["tasks"]:
                dropped[t] = ev["reason"]
        elif kind == "discard":
            discarded[ev["reason"].split(":")[0]] += 1
    counts = Counter(t for tasks in lineage.values() for t in tasks)
    rep.issued = len(issued)
    rep.trained = len(counts)
    rep.trained_twice = sorted(t for t, c in counts.items() if c > 1)
    rep.resolved_twice = sorted(set(counts) & set(dropped))
    kinds: Counter[str] = Counter(reason.split(":")[0] for reason in dropped.values())
    rep.dropped = dict(kinds)
    rep.dead_lettered = {t: r for t, r in dropped.items() if r.startswith("dead-lettered")}
    rep.in_flight = len(in_flight - set(counts) - set(dropped))
    rep.unaccounted = sorted(issued - set(counts) - set(dropped) - in_flight)
    rep.never_issued = sorted((set(counts) | set(dropped)) - issued)
    rep.discarded_entries = dict(discarded)
    rep.committed_step = max(lineage, default=0)
    return rep


def load_events(run_dir: Path, r: redis.Redis, prefix: str) -> list[dict]:
    """events.jsonl, then the events Redis still holds beyond it, in stream order, each id once."""
    seen: dict[str, dict] = {}
    path = run_dir / "events.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a torn line of a crash mid-write; the event is still in Redis
            seen.setdefault(ev["id"], ev)
    for eid, fields in r.xrange(f"{prefix}:events"):
        seen.setdefault(eid.decode(), json.loads(fields[b"e"]))
    return [seen[k] for k in sorted(seen, key=lambda i: tuple(int(x) for x in i.split("-")))]


def checkpoint_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return 0
    tag = latest.read_text().strip()
    return int(tag.split("_")[-1]) if tag.split("_")[-1].isdigit() else 0


def collect(run_dir: Path, cfg: Config, r: redis.Redis) -> Report:
    p, s = cfg.streams.key_prefix, cfg.streams
    uncommitted = {k.decode() for k in r.hkeys(f"{p}:uncommitted")}
    in_flight = {k.decode() for k in r.hkeys(f"{p}:outstanding")} | uncommitted
    rep = replay(load_events(run_dir, r, p), in_flight)
    rep.uncheckpointed = len(uncommitted)
    rep.checkpoint_step = checkpoint_step(run_dir)
    sizes = {
        f"xlen {k}": r.xlen(k)
        for k in (s.prompts, s.trajectories, f"{s.prompts}:dead", f"{s.trajectories}:dead", f"{p}:events")
    }
    sizes.update({f"hlen {p}:{k}": r.hlen(f"{p}:{k}") for k in ("outstanding", "uncommitted", "failed")})
    for stream, group in ((s.prompts, "rollout"), (s.trajectories, "trainer")):
        try:
            sizes[f"pending {stream}/{group}"] = int(r.xpending(stream, group)["pending"])
        except redis.ResponseError:
            sizes[f"pending {stream}/{group}"] = 0  # no such group yet
    sizes["used_memory_bytes"] = int(r.info("memory")["used_memory"])
    rep.sizes = sizes
    return rep


def render(rep: Report) -> str:
    lines = [
        f"tasks issued          {rep.issued}",
        f"groups trained        {rep.trained} (in the current weights' lineage; {rep.restores} restore(s) rolled "
        f"back {rep.rolled_back_steps} step(s), whose groups count once, where they were trained again)",
        f"trained twice         {len(rep.trained_twice)} {rep.trained_twice[:5] if rep.trained_twice else ''}",
        f"dropped               {sum(rep.dropped.values())} {rep.dropped}",
        f"dead-lettered         {len(rep.dead_lettered)}",
    ]
    lines += [f"  {t}: {why}" for t, why in list(rep.dead_lettered.items())[:20]]
    lines += [
        f"still in flight       {rep.in_flight}   trained since the last checkpoint {rep.uncheckpointed}",
        f"unaccounted for       {len(rep.unaccounted)} {rep.unaccounted[:5] if rep.unaccounted else ''}",
        f"resolved twice        {len(rep.resolved_twice)} {rep.resolved_twice[:5] if rep.resolved_twice else ''}",
        f"never issued          {len(rep.never_issued)} {rep.never_issued[:5] if rep.never_issued else ''}",
        f"discarded entries     {rep.discarded_entries} (late or duplicate copies, malformed records)",
        f"committed step        {rep.committed_step}   checkpoint step {rep.checkpoint_step}",
        "sizes                 " + ", ".join(f"{k}={v}" for k, v in rep.sizes.items()),
        "audit: OK" if rep.ok else "audit: FAILED",
    ]
    return "\n".join(lines)


def as_json(rep: Report) -> str:
    return json.dumps({**asdict(rep), "ok": rep.ok}, indent=1)


def main(run_dir: str, config: str | None, json_out: bool) -> int:
    """The CLI: config from `<run_dir>/config.yaml` (else `config`, else defaults; SEARCHRL_REDIS_URL wins), print
    the report, exit 0 when every task is accounted for and none was trained twice, 1 otherwise."""
    from searchrl.config import load_config
    from searchrl.redisio import EmbeddedRedis, connect

    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"--run-dir {d}: no such directory")
    written = d / "config.yaml"
    cfg = load_config(written if written.is_file() else config)
    url = cfg.addresses.redis_url
    embedded, scratch = None, None
    if (not url or "***" in url) and (d / "redis").is_dir():
        # the run's own AOF, read back from a copy (its server may still be running on the original)
        scratch = tempfile.mkdtemp(prefix="searchrl-audit-")
        for f in (d / "redis").iterdir():
            if f.is_file():
                shutil.copy2(f, scratch)
        embedded = EmbeddedRedis.start(scratch, persist=True)
        url = embedded.url
    if not url or "***" in url:
        raise ValueError(
            "addresses.redis_url: unknown or redacted in the run's config.yaml; set SEARCHRL_REDIS_URL"
        )
    try:
        r = connect(url, retries=2)
        rep = collect(d, cfg, r)
    finally:
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(scratch, ignore_errors=True)
    print(as_json(rep) if json_out else render(rep))
    return 0 if rep.ok else 1
