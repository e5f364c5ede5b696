"""The RL loop of the trainer, top to bottom: feed prompts, gather groups, step, commit, publish, checkpoint.

Guarantees (docs/reliability.md states them per failure; `ledger.py` holds the Redis side):
- prompts: the trainer keeps `groups_per_step * (max_staleness + 1)` tasks outstanding. A task leaves that set
  when its group is trained, dropped as stale, dead-lettered by a worker, found malformed, or expired after
  `task_timeout_s`; each way is an event in the run's log, and a replacement is issued.
- trajectories: read in consumer group `trainer` by ONE consumer. At start-up it takes over every pending entry
  (its own and any other trainer name's); after that it only reads new entries -- it never reclaims its own
  buffered entries. Only trajectories of outstanding tasks are admitted, each sample index once; late and
  duplicate copies are acked, deleted and counted. Entries are validated (types, finite numbers, token ids in
  the vocabulary) and a malformed one drops its task.
- commit: after the optimizer step the step's tasks are recorded as trained (with the step) and the new version
  announced, in one transaction; the entries stay pending until a checkpoint covers the step, and are then acked
  and deleted. A restart restores the newest checkpoint and rolls back the tasks of later steps to outstanding,
  so their still-pending entries are trained again: every trajectory is in the restored weights, trained again,
  or counted as dropped.
- staleness: a complete group whose oldest sample is more than `max_staleness` optimizer steps behind the
  current weights is dropped; versions are mapped to the step of their weights (`TrainerState.lineage`), so the
  version bump after a restore does not make on-policy samples look stale.
- a failed or non-finite optimizer step trains nothing: its groups are dropped and the weights stay unchanged
  (or are reloaded from the checkpoint if the step had already been applied).
Checkpoints (model + optimizer + state) every `save_every` steps, on a stop request and at the end; HF folders
every `export_every` steps (`<run_dir>/hf/step_N`) and at the end (`<run_dir>/hf/final`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis
from prometheus_client import Counter, Gauge

from searchrl import redisio
from searchrl.config import Config
from searchrl.records import PromptTask, Trajectory, task_id_of
from searchrl.weightsync import WeightStore, export_tensors, serialize_state_dict
from searchrl_trainer.data import Cursor, EpochIterator, load_qa
from searchrl_trainer.learner import Learner, StepFailed
from searchrl_trainer.ledger import GROUP, Issued, Ledger

if TYPE_CHECKING:
    from searchrl_trainer.push import WeightPusher

log = logging.getLogger(__name__)

STEPS = Counter("searchrl_trainer_steps_total", "Optimizer steps committed")
DROPPED = Counter("searchrl_trainer_dropped_groups_total", "Groups resolved without training", ["reason"])
DUPES = Counter(
    "searchrl_trainer_discarded_trajectories_total", "Late, duplicate or malformed entries discarded"
)
FAILED_STEPS = Counter(
    "searchrl_trainer_failed_steps_total", "Optimizer steps that failed and trained nothing"
)
VERSION = Gauge("searchrl_trainer_policy_version", "Current policy version")
REWARD = Gauge("searchrl_trainer_reward_mean", "Mean reward of the last step")
STEP_METRIC = Gauge(
    "searchrl_trainer_step_metric",
    "Every numeric value of the last step's metrics.jsonl line, by key (reward_mean, num_searches_mean, "
    "valid_query_rate, entropy_est, staleness_mean, generate_s, ...)",
    ["metric"],
)
WAITING = Gauge("searchrl_trainer_waiting_seconds", "Seconds the current wait for groups has lasted")
STALLED = Gauge(
    "searchrl_trainer_stalled", "1 while the wait for groups exceeds stall_factor x the usual wait"
)

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "auto": None}
EVENTS_FILE = "events.jsonl"


@dataclass
class TrainerState:
    step: int = 0
    version: int = 0
    stage_index: int = 0
    cursors: dict[str, dict] = field(default_factory=dict)  # stage name -> Cursor as dict
    trained_trajectories: int = 0
    dropped_groups: int = 0
    done: bool = False
    run_id: str = ""
    # [first version, optimizer step of its weights] segments: version v of the last segment starting at or
    # below v holds the weights of step `step + v - first` (a restore republishes old weights under a new number)
    lineage: list[list[int]] = field(default_factory=lambda: [[0, 0]])

    def step_of(self, version: int) -> int:
        for first, step in reversed(self.lineage):
            if version >= first:
                return step + version - first
        return version


@dataclass
class _Group:
    entries: dict[int, tuple[str, Trajectory]] = field(default_factory=dict)
    complete: bool = False


@dataclass
class _Wait:
    """Observability of the wait for groups (finding L13)."""

    since: float | None = None
    usual_s: float = 0.0
    stalled: bool = False


class TrainerLoop:
    def __init__(
        self, cfg: Config, learner: Learner, r: redis.Redis, store: WeightStore, consumer: str = "trainer-0"
    ) -> None:
        self.cfg, self.tc = cfg, cfg.trainer
        self.learner, self.r, self.store, self.consumer = learner, r, store, consumer
        self.state = TrainerState()
        self.run_dir = Path(cfg.run.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ledger = Ledger(r, cfg.streams, consumer)
        self.datasets = [load_qa(s.data) for s in self.tc.stages]
        self.nonce = uuid.uuid4().hex[:8]
        self.out: dict[str, Issued] = {}  # outstanding tasks, refreshed from Redis at each top-up
        self.buffer: dict[str, _Group] = {}  # task id -> samples held (partial or complete)
        self.ready: list[str] = []  # complete groups in arrival order
        self.held: set[str] = set()  # entry ids in `buffer`
        # (step, entry ids, task ids) of the steps since the last checkpoint: acked when one covers them
        self.unsaved: list[tuple[int, list[str], list[str]]] = []
        self.saved_step = 0
        self.wait = _Wait()
        self._taken_over = False
        self.pusher: WeightPusher | None = None
        if self.tc.weight_sync != "grpc":
            from searchrl_trainer.push import WeightPusher

            self.pusher = WeightPusher(cfg, r)
        redisio.ensure_group(r, cfg.streams.prompts, "rollout")
        redisio.ensure_group(r, cfg.streams.trajectories, GROUP)

    # ---- start-up -------------------------------------------------------------------------------------------

    def _run_id(self) -> str:
        """This run's identity, kept in the run dir from the first start on (before any checkpoint exists)."""
        path = self.run_dir / "run_id"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(uuid.uuid4().hex)
        return path.read_text().strip()

    def restore(self, load: bool | None = None) -> None:
        """Resume from the newest checkpoint (if any; `load` defaults to `trainer.resume`), roll the ledger back
        to it, and publish its weights under a version number no worker has seen (finding L1)."""
        run_id = self._run_id()
        self.state = TrainerState(run_id=run_id)
        if self.tc.resume if load is None else load:
            client = self.learner.load(str(self.ckpt_dir))
            if client:
                self.state = TrainerState(**client["trainer_state"])
                log.info("resumed at step %d, version %d", self.state.step, self.state.version)
        if self.state.run_id != run_id:
            raise RuntimeError(f"{self.ckpt_dir}: checkpoint of run {self.state.run_id}, not of {run_id}")
        self.ledger.claim_run(run_id, self.cfg.source)
        rolled = self.ledger.restore(self.state.step)
        if rolled:
            log.warning(
                "rolled back %d task(s) trained after checkpoint step %d: they are trained again",
                len(rolled),
                self.state.step,
            )
        announced = self.r.get(self.ledger.k_version)
        if announced is not None:
            self.state.version = max(self.state.version, int(announced)) + 1
            if self.state.step_of(self.state.version) != self.state.step:
                self.state.lineage.append([self.state.version, self.state.step])
        self.state.done = False
        self.saved_step = self.state.step
        self._truncate_metrics()
        self.buffer, self.ready, self.held, self.unsaved = {}, [], set(), []
        self._taken_over = False
        self.publish()
        self.ledger.mirror_events(self.run_dir / EVENTS_FILE)

    def _truncate_metrics(self) -> None:
        """metrics.jsonl follows the restored weights: lines of rolled-back steps go (they are trained again)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= self.state.step]
        if len(keep) != len(lines):
            path.write_text("".join(ln + "\n" for ln in keep))
            log.warning("metrics.jsonl: removed %d line(s) of rolled-back steps", len(lines) - len(keep))

    def _store_weights(self) -> None:
        """Serialise the current weights (in the rollout dtype) into the store under the current version, and hand
        them to the pusher when workers take pushed weights."""
        import torch

        dt = _DTYPES[self.cfg.rollout.dtype]
        tensors = export_tensors(
            self.learner.state_dict_for_export(), getattr(torch, dt) if dt else None, self.learner.export_skip
        )
        pub = self.store.publish(self.state.version, serialize_state_dict(tensors, None, set()))
        if self.pusher is not None:  # a snapshot: the next step changes the live tensors
            self.pusher.submit(pub.version, pub.sha256, {k: t.clone() for k, t in tensors.items()})

    def publish(self) -> None:
        """Store the weights, then announce the version (store first, so a pull never misses)."""
        self._store_weights()
        self.ledger.announce(self.state.version)
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
        """Resolve tasks that can no longer complete (dead-lettered by a worker, expired), then issue tasks up to
        the target. Returns the number issued."""
        self.out = self.ledger.outstanding()
        for task, reason in self.ledger.drain_failed().items():
            if task in self.out:
                self._drop_task(task, "dead-lettered", reason)
        now = time.time()
        for task, issued in list(self.out.items()):
            group = self.buffer.get(task)
            if now - issued.issued_at > self.tc.task_timeout_s and not (group and group.complete):
                self._drop_task(task, "expired", f"unresolved {now - issued.issued_at:.0f}s after issue")
        target = self.tc.groups_per_step * (self.tc.max_staleness + 1)
        missing = target - len(self.out)
        if missing <= 0:
            return 0
        si = self._stage()
        stage = self.tc.stages[si]
        it = EpochIterator(
            self.datasets[si], self.cfg.run.seed + si, Cursor(**self.state.cursors.get(stage.name, {}))
        )
        tasks = []
        for _ in range(missing):
            epoch, pos, item = it.next()
            tasks.append(
                PromptTask(
                    f"{stage.name}:{epoch}:{pos}:{self.nonce}",
                    item.question,
                    item.golden_answers,
                    self.tc.group_size,
                    stage.reward_preset,
                    self.state.version,
                    stage.name,
                )
            )
        self.ledger.issue(tasks, self.state.version)
        now = time.time()
        self.out.update({t.task_id: Issued(self.state.version, now, t.group_size) for t in tasks})
        self.state.cursors[stage.name] = asdict(it.cursor)
        return missing

    # ---- trajectories ----------------------------------------------------------------------------------------

    def _read(self, block_ms: int) -> list[tuple[str, dict]]:
        s = self.cfg.streams
        if not self._taken_over:
            self._taken_over = True
            pending = redisio.take_over_pending(self.r, s.trajectories, GROUP, self.consumer)
            if pending:
                log.info("took over %d pending trajectory entries", len(pending))
                return pending
        return redisio.read_group(self.r, s.trajectories, GROUP, self.consumer, 1000, block_ms)

    def _drop_task(self, task: str, kind: str, detail: str = "") -> None:
        """Resolve `task` without training it: release its buffered entries and its slot; record why."""
        group = self.buffer.pop(task, None)
        eids = [e for e, _ in group.entries.values()] if group else []
        self.held.difference_update(eids)
        if task in self.ready:
            self.ready.remove(task)
        self.out.pop(task, None)
        self.ledger.drop([task], f"{kind}: {detail}" if detail else kind, eids)
        self.state.dropped_groups += 1
        DROPPED.labels(kind).inc()
        log.warning("dropped task %s (%s%s)", task, kind, f": {detail}" if detail else "")

    def _admit(self, eid: str, fields: dict) -> None:
        """Buffer one trajectory entry of an outstanding task; mark its group ready once it has all samples."""
        if eid in self.held:  # a second delivery of an entry we hold: never ack it here
            return
        try:
            traj = Trajectory.decode(fields, self.learner.vocab_size, self.cfg.rollout.max_model_len)
        except ValueError as e:
            DUPES.inc()
            self.ledger.discard(eid, f"malformed: {e}", fields=fields)
            task = task_id_of(fields)
            if task in self.out:
                self._drop_task(task, "malformed", str(e))
            return
        issued = self.out.get(traj.task_id)
        if issued is None:
            DUPES.inc()
            self.ledger.discard(eid, "not outstanding (late, duplicate, or another run's)", traj.traj_id)
            return
        if traj.group_size != issued.group_size:
            self.ledger.discard(eid, "group_size differs from the task's", traj.traj_id, fields)
            self._drop_task(traj.task_id, "malformed", f"group_size {traj.group_size} != {issued.group_size}")
            return
        group = self.buffer.setdefault(traj.task_id, _Group())
        if traj.sample_index in group.entries:  # a redone task's second copy
            DUPES.inc()
            self.ledger.discard(eid, "duplicate sample", traj.traj_id)
            return
        group.entries[traj.sample_index] = (eid, traj)
        self.held.add(eid)
        if len(group.entries) == issued.group_size:
            group.complete = True
            self.ready.append(traj.task_id)

    def _staleness(self, group: _Group) -> int:
        """Optimizer steps between the oldest sample's weights and the current weights (a sample from a
        rolled-back future counts as infinitely stale)."""
        steps = [self.state.step_of(t.policy_version) for _, t in group.entries.values()]
        return 1 << 30 if max(steps) > self.state.step else self.state.step - min(steps)

    def _take_fresh(self, need: int) -> list[str]:
        """Drop ready groups that went stale while they waited; return the first `need` fresh ones or []."""
        for task in list(self.ready):
            lag = self._staleness(self.buffer[task])
            if lag > self.tc.max_staleness:
                self._drop_task(task, "stale", f"{lag} steps behind")
        if len(self.ready) < need:
            return []
        taken, self.ready = self.ready[:need], self.ready[need:]
        return taken

    def gather(
        self, need: int, timeout_s: float | None = None, stop_requested: Callable[[], bool] = lambda: False
    ) -> list[str]:
        """Block until `need` complete, fresh groups are buffered; keeps prompts topped up while waiting.
        Returns their task ids. Raises InterruptedError when `stop_requested()` turns true and TimeoutError
        after `timeout_s`."""
        t0 = time.monotonic()
        self.wait.since = t0
        try:
            while not (taken := self._take_fresh(need)):
                if stop_requested():
                    raise InterruptedError("stop requested")
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"only {len(self.ready)}/{need} groups after {timeout_s}s")
                self._check_stall(need)
                self.top_up_prompts()
                for eid, fields in self._read(block_ms=500):
                    self._admit(eid, fields)
        finally:
            self.wait.since = None
            WAITING.set(0)
            STALLED.set(0)
            self.wait.stalled = False
        waited = time.monotonic() - t0
        self.wait.usual_s = waited if self.state.step == 0 else 0.8 * self.wait.usual_s + 0.2 * waited
        return taken

    def waiting_s(self) -> float:
        """How long the current wait for groups has lasted (0 while training)."""
        since = self.wait.since
        return 0.0 if since is None else time.monotonic() - since

    def _check_stall(self, need: int) -> None:
        waited = self.waiting_s()
        WAITING.set(waited)
        limit = max(60.0, self.tc.stall_factor * self.wait.usual_s)
        if waited > limit and not self.wait.stalled:
            self.wait.stalled = True
            STALLED.set(1)
            partial = sum(1 for g in self.buffer.values() if not g.complete)
            log.warning(
                "stalled: waiting for groups %d/%d for %.0fs (usual %.0fs); %d tasks outstanding, %d partial "
                "groups buffered -- are the rollout workers alive and reaching Redis?",
                len(self.ready),
                need,
                waited,
                self.wait.usual_s,
                len(self.out),
                partial,
            )

    # ---- one step --------------------------------------------------------------------------------------------

    def step(
        self, timeout_s: float | None = None, stop_requested: Callable[[], bool] = lambda: False
    ) -> dict | None:
        """Gather, train, commit one step; returns its metrics, or None when the step failed and trained
        nothing (its groups are dropped and counted)."""
        t_wait = time.perf_counter()
        tasks = self.gather(self.tc.groups_per_step, timeout_s, stop_requested)
        wait_s = time.perf_counter() - t_wait
        groups = [self.buffer[t] for t in tasks]
        trajs = [g.entries[i][1] for g in groups for i in sorted(g.entries)]
        t0 = time.perf_counter()
        try:
            stats = self.learner.train_step(trajs)
        except StepFailed as e:
            return self._step_failed(tasks, e)
        train_s = time.perf_counter() - t0
        step_before = self.state.step
        self.state.step += 1
        self.state.version += 1
        self.state.trained_trajectories += len(trajs)
        t1 = time.perf_counter()
        self._store_weights()
        self.ledger.commit_step(
            self.state.step, self.state.version, [(t, len(self.buffer[t].entries)) for t in tasks]
        )
        VERSION.set(self.state.version)
        eids = [e for g in groups for e, _ in g.entries.values()]
        self.unsaved.append((self.state.step, eids, tasks))
        for t in tasks:
            self.buffer.pop(t)
        self.held.difference_update(eids)
        publish_s = time.perf_counter() - t1
        STEPS.inc()
        m = self._metrics(trajs, step_before, stats, wait_s, train_s, publish_s)
        REWARD.set(m["reward_mean"])
        for key, value in m.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                STEP_METRIC.labels(key).set(value)
        if self.tc.save_every and self.state.step % self.tc.save_every == 0:
            self.checkpoint()
        if self.tc.export_every and self.state.step % self.tc.export_every == 0:
            self.learner.export_hf(str(self.run_dir / "hf" / f"step_{self.state.step}"))
        return m

    def _step_failed(self, tasks: list[str], e: StepFailed) -> None:
        FAILED_STEPS.inc()
        log.error("optimizer step failed, its %d groups are dropped: %s", len(tasks), e)
        for t in tasks:
            self._drop_task(t, "train_failed", str(e)[:300])
        if e.applied:  # the update already reached the weights: back to the last checkpoint
            if not (self.ckpt_dir / "latest").is_file():
                raise RuntimeError(
                    "a failed update reached the weights before any checkpoint: restart from the model"
                )
            log.error("the failed update was applied: restoring checkpoint step %d", self.saved_step)
            self.restore(load=True)
        return None

    def _metrics(
        self,
        trajs: list[Trajectory],
        step_before: int,
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
        gen_tokens = [t.logprobs[t.loss_mask == 1] for t in trajs]
        n_gen = sum(len(x) for x in gen_tokens)
        searches = total("num_searches")
        # An empty query ends the rollout (R1-Searcher): it is an attempted search that was not valid, as is
        # one whose search call failed.
        attempted = searches + sum(1.0 for t in trajs if t.finish_reason == "empty_query")
        return {
            "step": self.state.step,
            "policy_version": self.state.version,
            "stage": trajs[0].stage or stage,
            "reward_mean": mean([t.reward for t in trajs]),
            "reward_std": float(np.std([t.reward for t in trajs])),
            "num_searches_mean": mean([t.metrics.get("num_searches", 0.0) for t in trajs]),
            "valid_query_rate": (searches - total("search_failures")) / attempted if attempted else 0.0,
            # Monte-Carlo estimate of the behaviour policy's entropy: the mean -log p of the sampled tokens.
            "entropy_est": float(-sum(float(x.sum()) for x in gen_tokens) / n_gen) if n_gen else 0.0,
            "response_len_mean": mean([len(t.response_ids) for t in trajs]),
            "generated_len_mean": mean([float(t.loss_mask.sum()) for t in trajs]),
            "staleness_mean": mean([step_before - self.state.step_of(t.policy_version) for t in trajs]),
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
        """Save model + optimizer + state, then ack and delete the entries of the steps it covers, prune old
        checkpoints and mirror the event log to the run dir."""
        t0 = time.perf_counter()
        step = self.state.step
        self.learner.save(str(self.ckpt_dir), f"step_{step}", {"trainer_state": asdict(self.state)})
        eids = [e for _, es, _ in self.unsaved for e in es]
        tasks = [t for _, _, ts in self.unsaved for t in ts]
        self.ledger.commit_checkpoint(step, eids, tasks)
        self.unsaved, self.saved_step = [], step
        prune_checkpoints(self.ckpt_dir, self.tc.keep_checkpoints)
        self.ledger.mirror_events(self.run_dir / EVENTS_FILE)
        log.info("checkpoint step %d in %.1fs", step, time.perf_counter() - t0)

    # ---- the whole run ---------------------------------------------------------------------------------------

    def run(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Train until `max_steps` or `max_minutes`, then checkpoint and export `hf/final`. A stop request
        checkpoints what was trained since the last checkpoint and returns without marking the run done."""
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()

        def out_of_time() -> bool:
            return self.tc.max_minutes > 0 and time.monotonic() - t0 > 60 * self.tc.max_minutes

        stopped = False
        with metrics_path.open("a") as f:
            try:
                while self.state.step < self.tc.max_steps and not stop_requested() and not out_of_time():
                    m = self.step(stop_requested=stop_requested)
                    if m is None:
                        continue
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
            except InterruptedError:
                stopped = True
                log.info("stop requested at step %d", self.state.step)
        if self.state.step > self.saved_step:
            self.checkpoint()
        if stopped or stop_requested():
            return
        self.learner.export_hf(str(self.run_dir / "hf" / "final"))
        self.state.done = True


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` DeepSpeed tag folders `step_N` (finding L4: a full disk kills a run)."""
    tags = sorted(
        (p for p in directory.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
