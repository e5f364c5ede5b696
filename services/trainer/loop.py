"""The RL loop of the trainer, top to bottom: feed prompts, gather groups, step, commit, publish, checkpoint.

Delivery guarantees (Redis Streams):
- prompts: the trainer keeps `groups_per_step * (max_staleness + 1)` tasks outstanding (hash
  `<prefix>:outstanding`, so a restarted trainer knows them); a task leaves it when its group is trained/dropped.
- trajectories: read in consumer group `trainer` (own pending first after a restart, then XAUTOCLAIM from dead
  consumers, then new). A trajectory is acked only in the same Redis transaction that records its id in the
  ledger `<prefix>:trained` and announces the new policy version — after the optimizer step. Ids already in the
  ledger (or in `<prefix>:dropped`) are acked and skipped, so nothing is trained twice.
- staleness: a complete group whose oldest sample is more than `max_staleness` versions behind is dropped.
Checkpoints (model + optimizer + step + version + data cursors) every `save_every` steps and at the end; HF
folders of the policy every `export_every` steps (`<run_dir>/hf/step_N`) and at the end (`<run_dir>/hf/final`).
The run ends at `max_steps` or after `max_minutes` of training.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import redis
from prometheus_client import Counter, Gauge

from searchrl import redisio
from searchrl.config import Config
from searchrl.records import PromptTask, Trajectory
from searchrl.weightsync import WeightStore, serialize_state_dict
from searchrl_trainer.data import Cursor, EpochIterator, load_qa
from searchrl_trainer.learner import Learner

log = logging.getLogger(__name__)

GROUP = "trainer"
STEPS = Counter("searchrl_trainer_steps_total", "Optimizer steps committed")
DROPPED = Counter("searchrl_trainer_dropped_groups_total", "Groups dropped as too stale")
DUPES = Counter("searchrl_trainer_duplicate_trajectories_total", "Trajectories skipped as already trained")
VERSION = Gauge("searchrl_trainer_policy_version", "Current policy version")
REWARD = Gauge("searchrl_trainer_reward_mean", "Mean reward of the last step")

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "auto": None}


@dataclass
class TrainerState:
    step: int = 0
    version: int = 0
    stage_index: int = 0
    cursors: dict[str, dict] = field(default_factory=dict)  # stage name -> Cursor as dict
    trained_trajectories: int = 0
    dropped_groups: int = 0
    done: bool = False


@dataclass
class _Group:
    entries: dict[int, tuple[str, Trajectory]] = field(default_factory=dict)


class TrainerLoop:
    def __init__(
        self, cfg: Config, learner: Learner, r: redis.Redis, store: WeightStore, consumer: str = "trainer-0"
    ) -> None:
        self.cfg, self.tc = cfg, cfg.trainer
        self.learner, self.r, self.store, self.consumer = learner, r, store, consumer
        self.state = TrainerState()
        self.run_dir = Path(cfg.run.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        prefix = cfg.streams.key_prefix
        self.k_version = redisio.policy_version_key(prefix)
        self.k_ledger = redisio.ledger_key(prefix)
        self.k_outstanding = f"{prefix}:outstanding"
        self.k_dropped = f"{prefix}:dropped"
        self.datasets = [load_qa(s.data) for s in self.tc.stages]
        self.nonce = uuid.uuid4().hex[:8]
        self.buffer: dict[str, _Group] = defaultdict(_Group)
        self.complete: list[_Group] = []
        self._pending_checked = False
        redisio.ensure_group(r, cfg.streams.prompts, "rollout")
        redisio.ensure_group(r, cfg.streams.trajectories, GROUP)
        self._reclaim = redisio.Reclaimer(
            r, cfg.streams.trajectories, GROUP, consumer, cfg.streams.claim_idle_ms
        )

    # ---- start-up -------------------------------------------------------------------------------------------

    def restore(self) -> None:
        """Resume from the newest checkpoint; never reuse a version number workers may already have seen."""
        if self.tc.resume:
            client = self.learner.load(str(self.ckpt_dir))
            if client:
                self.state = TrainerState(**client["trainer_state"])
                log.info("resumed at step %d, version %d", self.state.step, self.state.version)
        announced = int(self.r.get(self.k_version) or 0)
        if announced > self.state.version:
            self.state.version = announced + 1
        self.state.done = False
        self.publish()

    def _store_weights(self) -> None:
        """Serialise the current weights (in the rollout dtype) into the store under the current version."""
        import torch

        dt = _DTYPES[self.cfg.rollout.dtype]
        payload = serialize_state_dict(
            self.learner.state_dict_for_export(), getattr(torch, dt) if dt else None, self.learner.export_skip
        )
        self.store.publish(self.state.version, payload)

    def publish(self) -> None:
        """Store the weights, then announce the version (store first, so a pull never misses)."""
        self._store_weights()
        self.r.set(self.k_version, self.state.version)
        VERSION.set(self.state.version)

    # ---- prompts ---------------------------------------------------------------------------------------------

    def _stage(self) -> int:
        """Index of the stage the current step belongs to (stages with steps=0 last until the end)."""
        boundary = 0
        for i, s in enumerate(self.tc.stages):
            boundary += s.steps
            if s.steps == 0 or self.state.step < boundary:
                return i
        return len(self.tc.stages) - 1

    def top_up_prompts(self) -> int:
        target = self.tc.groups_per_step * (self.tc.max_staleness + 1)
        missing = target - self.r.hlen(self.k_outstanding)
        if missing <= 0:
            return 0
        si = self._stage()
        stage = self.tc.stages[si]
        it = EpochIterator(
            self.datasets[si], self.cfg.run.seed + si, Cursor(**self.state.cursors.get(stage.name, {}))
        )
        with self.r.pipeline(transaction=True) as p:
            for _ in range(missing):
                epoch, pos, item = it.next()
                task = PromptTask(
                    f"{stage.name}:{epoch}:{pos}:{self.nonce}",
                    item.question,
                    item.golden_answers,
                    self.tc.group_size,
                    stage.reward_preset,
                    self.state.version,
                    stage.name,
                )
                p.hset(self.k_outstanding, task.task_id, self.state.version)
                p.xadd(
                    self.cfg.streams.prompts, task.encode(), maxlen=self.cfg.streams.maxlen, approximate=True
                )
            p.execute()
        self.state.cursors[stage.name] = asdict(it.cursor)
        return missing

    # ---- trajectories ----------------------------------------------------------------------------------------

    def _read(self, block_ms: int) -> list[tuple[str, dict]]:
        s = self.cfg.streams
        if not self._pending_checked:
            self._pending_checked = True
            own = redisio.own_pending(self.r, s.trajectories, GROUP, self.consumer, 10_000)
            if own:
                return own
        claimed = self._reclaim(1000)
        if claimed:
            return claimed
        return redisio.read_group(self.r, s.trajectories, GROUP, self.consumer, 1000, block_ms)

    def _ack(self, ids: list[str]) -> None:
        if ids:
            self.r.xack(self.cfg.streams.trajectories, GROUP, *ids)

    def _admit(self, eid: str, traj: Trajectory) -> None:
        """Buffer one trajectory; move its group to `complete` (or drop it) once it has all samples."""
        with self.r.pipeline(transaction=False) as p:
            p.sismember(self.k_ledger, traj.traj_id)
            p.sismember(self.k_dropped, traj.traj_id)
            trained, dropped = p.execute()
        if trained or dropped:  # a redone task whose group was already trained or dropped
            DUPES.inc()
            self._ack([eid])
            return
        group = self.buffer[traj.task_id]
        if traj.sample_index in group.entries:  # a redone task: keep the first copy
            DUPES.inc()
            self._ack([eid])
            return
        group.entries[traj.sample_index] = (eid, traj)
        if len(group.entries) < traj.group_size:
            return
        del self.buffer[traj.task_id]
        oldest = min(t.policy_version for _, t in group.entries.values())
        if self.state.version - oldest > self.tc.max_staleness:
            DROPPED.inc()
            self.state.dropped_groups += 1
            with self.r.pipeline(transaction=True) as p:
                p.sadd(self.k_dropped, *[t.traj_id for _, t in group.entries.values()])
                p.xack(self.cfg.streams.trajectories, GROUP, *[e for e, _ in group.entries.values()])
                p.hdel(self.k_outstanding, traj.task_id)
                p.execute()
            return
        self.complete.append(group)

    def gather(
        self, need: int, timeout_s: float | None = None, stop_requested: Callable[[], bool] = lambda: False
    ) -> list[_Group]:
        """Block until `need` complete, fresh groups are buffered; keeps prompts topped up while waiting.
        Raises InterruptedError when `stop_requested()` turns true and TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(self.complete) < need:
            if stop_requested():
                raise InterruptedError("stop requested")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.complete)}/{need} groups after {timeout_s}s")
            self.top_up_prompts()
            for eid, fields in self._read(block_ms=500):
                try:
                    traj = Trajectory.decode(fields)
                except ValueError as e:
                    log.error("dropping malformed trajectory %s: %s", eid, e)
                    self._ack([eid])
                    continue
                self._admit(eid, traj)
        groups, self.complete = self.complete[:need], self.complete[need:]
        return groups

    # ---- one step --------------------------------------------------------------------------------------------

    def step(
        self, timeout_s: float | None = None, stop_requested: Callable[[], bool] = lambda: False
    ) -> dict:
        t_wait = time.perf_counter()
        groups = self.gather(self.tc.groups_per_step, timeout_s, stop_requested)
        wait_s = time.perf_counter() - t_wait
        trajs = [g.entries[i][1] for g in groups for i in sorted(g.entries)]
        t0 = time.perf_counter()
        stats = self.learner.train_step(trajs)
        train_s = time.perf_counter() - t0
        version_before = self.state.version
        self.state.step += 1
        self.state.version += 1
        self.state.trained_trajectories += len(trajs)
        publish_s = self.publish_and_commit(groups)
        STEPS.inc()
        m = self._metrics(trajs, version_before, stats, wait_s, train_s, publish_s)
        REWARD.set(m["reward_mean"])
        if self.tc.save_every and self.state.step % self.tc.save_every == 0:
            self.checkpoint()
        if self.tc.export_every and self.state.step % self.tc.export_every == 0:
            self.learner.export_hf(str(self.run_dir / "hf" / f"step_{self.state.step}"))
        return m

    def publish_and_commit(self, groups: list[_Group]) -> float:
        """Publish new weights, then atomically: ledger ids, ack, forget the tasks, announce the version."""
        t0 = time.perf_counter()
        self._store_weights()
        entries = [e for g in groups for e in g.entries.values()]
        with self.r.pipeline(transaction=True) as p:
            p.sadd(self.k_ledger, *[t.traj_id for _, t in entries])
            p.xack(self.cfg.streams.trajectories, GROUP, *[eid for eid, _ in entries])
            p.hdel(self.k_outstanding, *{t.task_id for _, t in entries})
            p.set(self.k_version, self.state.version)
            p.execute()
        VERSION.set(self.state.version)
        return time.perf_counter() - t0

    def _metrics(
        self,
        trajs: list[Trajectory],
        version_before: int,
        stats: dict,
        wait_s: float,
        train_s: float,
        publish_s: float,
    ) -> dict:
        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else 0.0

        def total(key: str) -> float:
            return float(sum(t.metrics.get(key, 0.0) for t in trajs))

        stage = self.tc.stages[self._stage() if self.state.step > 0 else 0].name
        return {
            "step": self.state.step,
            "policy_version": self.state.version,
            "stage": trajs[0].stage or stage,
            "reward_mean": mean([t.reward for t in trajs]),
            "reward_std": float(np.std([t.reward for t in trajs])),
            "num_searches_mean": mean([t.metrics.get("num_searches", 0.0) for t in trajs]),
            "response_len_mean": mean([len(t.response_ids) for t in trajs]),
            "generated_len_mean": mean([float(t.loss_mask.sum()) for t in trajs]),
            "staleness_mean": mean([version_before - t.policy_version for t in trajs]),
            "em_mean": mean([t.metrics.get("em", 0.0) for t in trajs]),
            "cem_mean": mean([t.metrics.get("cem", 0.0) for t in trajs]),
            "f1_mean": mean([t.metrics.get("f1", 0.0) for t in trajs]),
            "format_ok_mean": mean([t.metrics.get("format_ok", 0.0) for t in trajs]),
            "generate_s": total("generate_s"),
            "retrieve_s": total("retrieve_s"),
            "reward_s": total("reward_s"),
            "train_s": train_s,
            "weight_sync_s": publish_s + total("weight_sync_s"),
            "wait_s": wait_s,
            "trajectories": len(trajs),
            "dropped_groups": self.state.dropped_groups,
            **stats,
        }

    def checkpoint(self) -> None:
        t0 = time.perf_counter()
        self.learner.save(
            str(self.ckpt_dir), f"step_{self.state.step}", {"trainer_state": asdict(self.state)}
        )
        log.info("checkpoint step %d in %.1fs", self.state.step, time.perf_counter() - t0)

    # ---- the whole run ---------------------------------------------------------------------------------------

    def run(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()

        def out_of_time() -> bool:
            return self.tc.max_minutes > 0 and time.monotonic() - t0 > 60 * self.tc.max_minutes

        with metrics_path.open("a") as f:
            while self.state.step < self.tc.max_steps and not stop_requested() and not out_of_time():
                m = self.step(stop_requested=stop_requested)
                f.write(json.dumps(m) + "\n")
                f.flush()
                log.info(
                    "step %d v%d reward %.3f searches %.2f len %.0f gen %.1fs train %.1fs",
                    m["step"],
                    m["policy_version"],
                    m["reward_mean"],
                    m["num_searches_mean"],
                    m["response_len_mean"],
                    m["generate_s"],
                    m["train_s"],
                )
        if self.tc.save_every == 0 or self.state.step % self.tc.save_every != 0:
            self.checkpoint()
        self.learner.export_hf(str(self.run_dir / "hf" / "final"))
        self.state.done = True
