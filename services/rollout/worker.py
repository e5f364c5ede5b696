"""Rollout worker: prompt tasks in from Redis, scored trajectories out to Redis, weights pulled from the trainer.

One iteration (`step()`):
1. sync weights when Redis announces a newer policy version (or a task needs one);
2. take up to `tasks_per_batch` prompt tasks: first its own pending entries (after a restart), then entries of dead
   consumers idle longer than `streams.claim_idle_ms` (XAUTOCLAIM), then new ones (XREADGROUP);
3. sample `group_size` responses per task through the search loop (one engine call per round);
4. score them (one Reward.Score call per preset);
5. in ONE Redis transaction: XADD every trajectory and XACK the tasks — a crash anywhere before leaves the task
   pending, to be redone by this or another worker; nothing is lost and nothing is written twice.
While it works, a heartbeat resets the idle time of its in-flight tasks so live workers are never robbed.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import redis
from prometheus_client import Counter, Gauge, Histogram

from searchrl import redisio
from searchrl.config import Config
from searchrl.protocol import Protocol, get_protocol
from searchrl.records import PromptTask, Trajectory
from searchrl.weightsync import pull_weights
from searchrl_reward.rules import ScoreResult
from searchrl_reward.scorer import ScoreInput
from searchrl_rollout.engine import Engine
from searchrl_rollout.search_loop import LoopLimits, Sample, build_prompt_ids, run_search_loop

log = logging.getLogger(__name__)

GROUP = "rollout"
TASKS = Counter("searchrl_rollout_tasks_total", "Prompt tasks completed")
TRAJ = Counter("searchrl_rollout_trajectories_total", "Trajectories written")
BAD = Counter("searchrl_rollout_bad_tasks_total", "Malformed prompt tasks moved to the dead-letter stream")
VERSION = Gauge("searchrl_rollout_policy_version", "Policy version being served")
PHASE = Histogram("searchrl_rollout_phase_seconds", "Time per batch phase", ["phase"])

ScoreFn = Callable[[str, list[ScoreInput]], list[ScoreResult]]
PullFn = Callable[[int, str], tuple[int, str, str]]


@dataclass
class WorkerState:
    version: int = 0
    weights_sha256: str = ""
    tasks_done: int = 0
    trajectories_written: int = 0


class RolloutWorker:
    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        tokenizer,
        search,
        score: ScoreFn,  # noqa: ANN001
        pull: PullFn,
        r: redis.Redis,
        consumer: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.tokenizer = tokenizer
        self.search = search
        self.score = score
        self.pull = pull
        self.r = r
        self.protocol: Protocol = get_protocol(cfg.rollout.protocol)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state = WorkerState()
        self.weights_dir = cfg.rollout.weights_dir or tempfile.mkdtemp(prefix="searchrl-weights-")
        self.streams = cfg.streams
        self.version_key = redisio.policy_version_key(cfg.streams.key_prefix)
        self._sync_lock = threading.Lock()
        self._inflight: list[str] = []
        self._inflight_lock = threading.Lock()
        self._stop = threading.Event()
        self._checked_own_pending = False
        self.limits = LoopLimits.from_config(cfg.rollout)
        redisio.ensure_group(r, cfg.streams.prompts, GROUP)
        self._reclaim = redisio.Reclaimer(
            r, cfg.streams.prompts, GROUP, self.consumer, cfg.streams.claim_idle_ms
        )

    # ---- weights -------------------------------------------------------------------------------------------

    def announced_version(self) -> int:
        v = self.r.get(self.version_key)
        return int(v) if v is not None else 0

    def sync_weights(self, min_version: int) -> float:
        """Pull and load weights of at least `min_version` if we hold an older one; returns seconds spent."""
        with self._sync_lock:
            if self.state.version >= min_version:
                return 0.0
            t0 = time.perf_counter()
            version, sha, folder = self.pull(min_version, self.weights_dir)
            self.engine.load_weights(folder)
            self.state.version, self.state.weights_sha256 = version, sha
            VERSION.set(version)
            dt = time.perf_counter() - t0
            PHASE.labels("weight_sync").observe(dt)
            log.info("loaded policy v%d in %.2fs", version, dt)
            return dt

    # ---- task intake ----------------------------------------------------------------------------------------

    def _take(self, block_ms: int) -> list[tuple[str, dict]]:
        s, n = self.streams, self.cfg.rollout.tasks_per_batch
        if not self._checked_own_pending:
            self._checked_own_pending = True
            own = redisio.own_pending(self.r, s.prompts, GROUP, self.consumer, n)
            if own:
                return own
        taken = self._reclaim(n)
        if taken:
            log.warning("reclaimed %d prompt task(s) from dead consumers", len(taken))
            return taken
        return redisio.read_group(self.r, s.prompts, GROUP, self.consumer, n, block_ms)

    def _decode(self, entries: list[tuple[str, dict]]) -> list[tuple[str, PromptTask]]:
        good = []
        for eid, fields in entries:
            try:
                task = PromptTask.decode(fields)
                if task.group_size < 1 or not task.golden_answers:
                    raise ValueError("group_size must be >= 1 and golden_answers non-empty")
                good.append((eid, task))
            except ValueError as e:
                log.error("dead-lettering prompt task %s: %s", eid, e)
                BAD.inc()
                with self.r.pipeline(transaction=True) as p:
                    p.xadd(f"{self.streams.prompts}:dead", {**fields, "error": str(e)})
                    p.xack(self.streams.prompts, GROUP, eid)
                    p.execute()
        return good

    def heartbeat(self) -> None:
        with self._inflight_lock:
            ids = list(self._inflight)
        if ids:
            redisio.touch(self.r, self.streams.prompts, GROUP, self.consumer, ids)

    # ---- one batch -------------------------------------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> int:
        """Process one batch of prompt tasks; returns the number of tasks completed (0 when idle)."""
        block = int(self.cfg.rollout.poll_interval_s * 1000) if block_ms is None else block_ms
        sync_s = self.sync_weights(self.announced_version())
        tasks = self._decode(self._take(block))
        if not tasks:
            return 0
        with self._inflight_lock:
            self._inflight = [eid for eid, _ in tasks]
        try:
            sync_s += self.sync_weights(max(t.min_policy_version for _, t in tasks))
            trajs = self._rollout([t for _, t in tasks], sync_s)
            with self.r.pipeline(transaction=True) as p:
                for traj in trajs:
                    p.xadd(
                        self.streams.trajectories, traj.encode(), maxlen=self.streams.maxlen, approximate=True
                    )
                p.xack(self.streams.prompts, GROUP, *[eid for eid, _ in tasks])
                p.execute()
        finally:
            with self._inflight_lock:
                self._inflight = []
        self.state.tasks_done += len(tasks)
        self.state.trajectories_written += len(trajs)
        TASKS.inc(len(tasks))
        TRAJ.inc(len(trajs))
        return len(tasks)

    def _rollout(self, tasks: list[PromptTask], sync_s: float) -> list[Trajectory]:
        rc, version = self.cfg.rollout, self.state.version
        samples: list[tuple[PromptTask, int, Sample]] = []
        for task in tasks:
            prompt = build_prompt_ids(
                self.tokenizer,
                self.protocol,
                task.question,
                self.cfg.model.chat_template,
                rc.system_prompt,
                rc.examples,
            )
            if len(prompt) > rc.max_prompt_tokens:
                log.warning(
                    "task %s: prompt of %d tokens cut to rollout.max_prompt_tokens=%d from the left "
                    "(instructions and examples first)",
                    task.task_id,
                    len(prompt),
                    rc.max_prompt_tokens,
                )
                prompt = prompt[-rc.max_prompt_tokens :]
            base_seed = (
                zlib.crc32(f"{self.cfg.run.seed}:{task.task_id}".encode()) if rc.temperature > 0 else None
            )
            for i in range(task.group_size):
                seed = None if base_seed is None else base_seed + 104729 * i
                samples.append((task, i, Sample(list(prompt), seed=seed)))

        def tokenize(text: str) -> list[int]:
            return self.tokenizer.encode(text, add_special_tokens=False)

        loop = run_search_loop(
            self.engine, self.search, tokenize, self.protocol, [s for _, _, s in samples], self.limits
        )
        PHASE.labels("generate").observe(loop.generate_s)
        PHASE.labels("retrieve").observe(loop.retrieve_s)
        self.heartbeat()

        texts = [self.tokenizer.decode(s.response_ids, skip_special_tokens=False) for _, _, s in samples]
        t0 = time.perf_counter()
        scores: list[ScoreResult | None] = [None] * len(samples)
        for preset in sorted({t.reward_preset for t, _, _ in samples}):
            idx = [j for j, (t, _, _) in enumerate(samples) if t.reward_preset == preset]
            got = self.score(
                preset,
                [ScoreInput(samples[j][0].question, texts[j], samples[j][0].golden_answers) for j in idx],
            )
            for j, sc in zip(idx, got, strict=True):
                scores[j] = sc
        reward_s = time.perf_counter() - t0
        PHASE.labels("reward").observe(reward_s)

        n = len(samples)
        share = {
            "generate_s": loop.generate_s / n,
            "retrieve_s": loop.retrieve_s / n,
            "reward_s": reward_s / n,
            "weight_sync_s": sync_s / n,
        }
        out = []
        for (task, i, s), sc in zip(samples, scores, strict=True):
            assert sc is not None
            out.append(
                Trajectory(
                    traj_id=f"{task.task_id}/{i}",
                    task_id=task.task_id,
                    sample_index=i,
                    group_size=task.group_size,
                    policy_version=version,
                    prompt_ids=np.asarray(s.prompt_ids, np.int32),
                    response_ids=np.asarray(s.response_ids, np.int32),
                    loss_mask=np.asarray(s.loss_mask, np.uint8),
                    logprobs=np.asarray(s.logprobs, np.float32),
                    reward=float(sc.reward),
                    metrics={
                        "em": sc.em,
                        "cem": sc.cem,
                        "f1": sc.f1,
                        "format_ok": float(sc.format_ok),
                        "num_searches": float(s.num_searches),
                        **share,
                    },
                    finish_reason=s.finish_reason,
                    stage=task.stage,
                )
            )
        return out

    # ---- main loop -----------------------------------------------------------------------------------------

    def run_forever(self) -> None:
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        while not self._stop.is_set():
            try:
                self.step()
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("redis unavailable (%s); retrying", e)
                time.sleep(1.0)
            except grpc.RpcError as e:
                # retriever/reward/trainer unreachable past the client retries: the batch's tasks stay pending
                # (no heartbeat any more) and are reclaimed once idle, by this worker or another.
                log.error("batch failed: %s %s; tasks will be retried", e.code(), e.details())
                time.sleep(2.0)

    def _heartbeat_loop(self) -> None:
        period = max(self.streams.claim_idle_ms / 3000.0, 0.05)
        while not self._stop.wait(period):
            try:
                self.heartbeat()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def stop(self) -> None:
        self._stop.set()


def make_puller(trainer_stub) -> PullFn:  # noqa: ANN001
    def pull(min_version: int, directory: str) -> tuple[int, str, str]:
        deadline = time.monotonic() + 600
        while True:
            try:
                return pull_weights(trainer_stub, min_version, directory)
            except Exception as e:  # noqa: BLE001 - not published yet / trainer restarting: wait and retry
                if time.monotonic() > deadline:
                    raise
                log.info("weights v%d not available yet (%s); waiting", min_version, str(e)[:200])
                time.sleep(1.0)

    return pull
