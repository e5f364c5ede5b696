"""Rollout worker on vLLM's async engine: every sample advances on its own, tasks are admitted as slots free up.

The queue contract is RolloutWorker's (worker.py's docstring, docs/reliability.md): own pending tasks first, then
reclaimed ones one at a time, then new ones; dead letters after `streams.max_deliveries` or a failed decode; a
task's trajectories written, acked and deleted in one transaction for the tasks still owned; heartbeats on the
tasks in flight; WorkerBroken after BROKEN_AFTER tasks failed alone in a row. What differs:
- admission (`run_forever`): a task is taken whenever the samples in flight plus the group of the last task taken
  fit `rollout.max_concurrent` (or nothing runs); `rollout.max_concurrent` counts samples, i.e. engine requests;
- a task's samples run through services/rollout/async_loop.py (one shared `SearchBatcher` coalesces the queries
  of every sample of every task waiting at that moment); the group is scored and committed as soon as it
  completes, while the other tasks go on;
- failures are per task: every task already runs alone, so one that fails for a non-transient reason is
  dead-lettered at once (counted towards WorkerBroken); a transient failure (Redis, gRPC UNAVAILABLE or
  DEADLINE_EXCEEDED, every search of the task failing so) leaves it pending and pauses admission with backoff;
- weights: when Redis announces another version (or `SyncWeights` / a task's `min_policy_version` asks for one),
  the payload is pulled on a thread while generation goes on, then the `GenerationGate` is closed, the segments
  in flight finish, the engine reloads, and the gate opens again. A task whose `min_policy_version` is newer
  than the held weights (capped at the announced version) waits for that sync before its samples start.
  A sample whose segments straddle a reload keeps the version of its FIRST segment as `policy_version` (the
  trainer's staleness is then measured from the oldest weights that produced it, and a sample begun under
  rolled-back weights counts as stale); each token's behaviour log-prob is the one of the weights that sampled
  it, which is what the decoupled objective's behaviour policy needs (AReaL keeps interrupted samples the same
  way); `metrics.policy_versions` counts the versions a sample saw;
- `step()` (tests, tools) takes one intake of up to `tasks_per_batch` tasks, runs them concurrently to their end
  and returns how many were written; it raises a task's transient error after the others were committed.
Threads: the event loop (engine, admission, bookkeeping) runs on the thread that calls `step` / `run_forever`;
Redis, Reward and Retriever calls run on worker threads; the heartbeat thread is RolloutWorker's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from searchrl.records import PromptTask, Trajectory
from searchrl_rollout.async_loop import AsyncEngine, GenerationGate, SearchBatcher, run_samples
from searchrl_rollout.worker import (
    TASKS,
    TRAJ,
    Held,
    RolloutWorker,
    WorkerBroken,
    _backoff_s,
    _describe,
    is_transient,
)

log = logging.getLogger(__name__)


class AsyncRolloutWorker(RolloutWorker):
    """RolloutWorker's queue contract with per-sample asynchronous rollouts (see the module docstring)."""

    engine: AsyncEngine

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - RolloutWorker's
        super().__init__(*args, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._gate = GenerationGate(lambda: self.state.version)
        self._batcher = SearchBatcher(self.search, self.limits.max_search_batch)
        self._sync_lock = asyncio.Lock()
        self._last_group = 1
        self._admit_after = 0.0  # monotonic time before which no task is taken (backoff)

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    # ---- weights ---------------------------------------------------------------------------------------------

    async def _sync_async(self, need: int) -> float:
        """`_sync` without stopping generation for the pull: only the reload waits for the segments in flight.
        One sync at a time; returns seconds spent."""
        async with self._sync_lock:
            announced = await asyncio.to_thread(self._sync_target, need)
            if announced is None:
                return 0.0
            t0 = time.perf_counter()
            rc = self.cfg.rollout
            pulled = await asyncio.to_thread(
                self.pull, announced, self.weights_dir, rc.weights_pull_timeout_s
            )
            if self._pulled_is_held(*pulled):
                return self._adopt(announced, None, t0)
            await self._gate.pause()
            try:
                await self.engine.load_weights(pulled[2])
                return self._adopt(announced, pulled, t0)
            finally:
                self._gate.resume()

    # ---- one task --------------------------------------------------------------------------------------------

    async def _run_task(self, h: Held) -> int:
        """Roll out, score and commit one task; returns 1 if its trajectories were written. A non-transient
        failure of its rollout dead-letters it; any other error propagates and leaves it pending."""
        with self._inflight_lock:
            self._inflight.append(h.eid)
        try:
            sync_s = 0.0
            if h.task.min_policy_version > self.state.version:
                sync_s = await self._sync_async(h.task.min_policy_version)
            try:
                trajs = await self._rollout_task(h.task, sync_s)
            except Exception as e:
                if is_transient(e):
                    raise
                self._count_failed_alone(e)
                reason = f"failed alone: {_describe(e)}"
                await asyncio.to_thread(self._dead_letter, h.eid, h.fields, reason, "failed")
                return 0
            self._failed_alone = 0
            done, trajs = await asyncio.to_thread(self._commit, [h], trajs)
        finally:
            with self._inflight_lock:
                self._inflight = [i for i in self._inflight if i != h.eid]
        self.state.tasks_done += len(done)
        self.state.trajectories_written += len(trajs)
        TASKS.inc(len(done))
        TRAJ.inc(len(trajs))
        return len(done)

    async def _rollout_task(self, task: PromptTask, sync_s: float) -> list[Trajectory]:
        samples = self._samples(task)
        loop, versions = await run_samples(
            self.engine, self._batcher, self._tokenize, self.protocol, samples, self.limits, self._gate
        )
        rows = [(task, i, s) for i, s in enumerate(samples)]
        return await asyncio.to_thread(self._trajectories, rows, loop, sync_s, versions)

    # ---- one intake (tests, tools) -----------------------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> int:
        """One intake of up to `tasks_per_batch` tasks, run concurrently to their end; returns tasks written."""
        block = int(self.cfg.rollout.poll_interval_s * 1000) if block_ms is None else block_ms
        return self._loop.run_until_complete(self._step(block))

    async def _step(self, block_ms: int) -> int:
        await self._sync_async(0)
        held = await asyncio.to_thread(self._take, block_ms, self.cfg.rollout.tasks_per_batch)
        results = await asyncio.gather(*(self._run_task(h) for h in held), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, WorkerBroken)), errors[0])
        return sum(results)

    # ---- continuous admission ----------------------------------------------------------------------------------

    def _serve(self) -> None:
        self._loop.run_until_complete(self._serve_async())

    def _fits(self, running: dict[asyncio.Task, Held]) -> bool:
        """Whether the last task's group fits next to the samples of the tasks running (or nothing runs)."""
        in_flight = sum(h.task.group_size for h in running.values())
        return not running or in_flight + self._last_group <= self.cfg.rollout.max_concurrent

    async def _admit(self, running: dict[asyncio.Task, Held]) -> None:
        """Take tasks while they fit; wait up to poll_interval_s for one only when nothing runs."""
        block = int(self.cfg.rollout.poll_interval_s * 1000)
        while not self._stop.is_set() and time.monotonic() >= self._admit_after and self._fits(running):
            held = await asyncio.to_thread(self._take, None if running else block, 1)
            if not held:
                return
            for h in held:
                self._last_group = h.task.group_size
                running[asyncio.create_task(self._run_task(h))] = h

    def _start_sync(self, syncing: asyncio.Task | None) -> asyncio.Task | None:
        """The background sync task: a new one when the previous has ended (its failure logged)."""
        if syncing is not None and not syncing.done():
            return syncing
        if syncing is not None and not syncing.cancelled() and syncing.exception() is not None:
            log.warning("weight sync failed (%s); retrying", _describe(syncing.exception()))
        return asyncio.create_task(self._sync_async(0))

    async def _serve_async(self) -> None:
        """Admit, sync and collect until `stop()`; then let the tasks in flight finish. WorkerBroken cancels
        them (they stay pending) and propagates."""
        poll = self.cfg.rollout.poll_interval_s
        running: dict[asyncio.Task, Held] = {}
        syncing: asyncio.Task | None = None
        failures = 0
        try:
            while running or not self._stop.is_set():
                syncing = self._start_sync(syncing)
                await self._admit(running)
                if not running:
                    if time.monotonic() < self._admit_after:  # backing off: _admit took nothing
                        await asyncio.sleep(min(poll, self._admit_after - time.monotonic()))
                    continue
                finished, _ = await asyncio.wait(running, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    h = running.pop(t)
                    e = t.exception()
                    if e is None:
                        failures = 0
                        continue
                    if isinstance(e, WorkerBroken):
                        raise e
                    failures += 1
                    self._failed(e, f"task {h.task.task_id}")
                    self._admit_after = time.monotonic() + _backoff_s(failures)
        finally:
            pending = [*running, *([syncing] if syncing else [])]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        super().close()
        if not self._loop.is_running():
            self._loop.close()
