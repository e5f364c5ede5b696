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
- pushed weights (`trainer.weight_sync: nccl | gloo`, services/trainer/push.py): the worker registers its control
  address in Redis and the trainer drives `push_start` (gate closed once the segments in flight finish) /
  `push_update` / `push_finish` (adopt the version and sha256, gate open) over gRPC. A newer announced version is
  awaited from the push for PUSH_WAIT_S and pulled after that. A push that fails or never finishes (no finish
  within `rollout.weights_pull_timeout_s`) leaves the engine's weights unknown: the gate stays closed until the announced version,
  even the number held, has been pulled and reloaded;
- `step()` (tests, tools) takes one intake of up to `tasks_per_batch` tasks, runs them concurrently to their end
  and returns how many were written; it raises a task's transient error after the others were committed.
Threads: the event loop (engine, admission, bookkeeping) runs on the thread that calls `step` / `run_forever`;
Redis, Reward and Retriever calls run on worker threads; the heartbeat thread is RolloutWorker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Coroutine
from typing import Any

from searchrl import redisio
from searchrl.records import PromptTask, Trajectory
from searchrl_rollout.async_loop import AsyncEngine, GenerationGate, SearchBatcher, run_samples
from searchrl_rollout.worker import (
    PHASE,
    TASKS,
    TRAJ,
    VERSION,
    Held,
    RolloutWorker,
    WorkerBroken,
    _backoff_s,
    _describe,
    is_transient,
)

log = logging.getLogger(__name__)

PUSH_WAIT_S = 30.0  # how long a newer announced version is awaited from the trainer's push before a pull


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
        self.pushed = self.cfg.trainer.weight_sync != "grpc"
        self.push_wait_s = min(PUSH_WAIT_S, self.cfg.rollout.weights_pull_timeout_s)
        self.push_timeout_s = self.cfg.rollout.weights_pull_timeout_s  # start to finish of one push
        self.receiver_address = ""  # set by register_receiver once the control server listens
        self._push_watchdog: asyncio.TimerHandle | None = None
        self._push_t0 = 0.0

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    # ---- weights ---------------------------------------------------------------------------------------------

    async def _sync_async(self, need: int) -> float:
        """`_sync` without stopping generation for the pull: only the reload waits for the segments in flight.
        One sync at a time; returns seconds spent. With pushed weights, a newer announced version is first
        awaited from the trainer's push (`push_wait_s`); the pull is the fallback."""
        if self.pushed and self.receiver_address and await self._push_awaited():
            return 0.0
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

    # ---- pushed weights (trainer.weight_sync: nccl | gloo; called on the loop from gRPC threads) ----------------

    def on_loop(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run `coro` on the worker's event loop (the engine's) from another thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def push_init(self, init_info: dict[str, Any]) -> None:
        """Join the trainer's transfer group (blocks until the trainer's rank 0 has joined)."""
        await self.engine.init_transfer(init_info)

    async def push_start(self) -> None:
        """Close the gate (segments in flight finish first) and open an update; one sync at a time. If no
        finish follows within `push_timeout_s` (`rollout.weights_pull_timeout_s`), the push counts as failed
        (`_push_failed`)."""
        await self._sync_lock.acquire()
        try:
            await self._gate.pause()
            await self.engine.start_update()
        except BaseException:
            self._gate.resume()
            self._sync_lock.release()
            raise
        self._push_t0 = time.perf_counter()
        self._push_watchdog = asyncio.get_running_loop().call_later(
            self.push_timeout_s, lambda: asyncio.ensure_future(self._push_failed("no finish"))
        )

    async def push_update(self, update_info: dict[str, Any]) -> None:
        try:
            await self.engine.update(update_info)
        except BaseException as e:
            await self._push_failed(f"update failed: {_describe(e)}")
            raise

    async def push_finish(self, version: int, sha: str) -> None:
        """Reload in place and adopt `version` (what the trainer published with `sha`); generation goes on."""
        if self._push_watchdog is None:
            raise RuntimeError("FinishWeightUpdate without an open update (StartWeightUpdate first)")
        try:
            await self.engine.finish_update()
        except BaseException as e:
            await self._push_failed(f"finish failed: {_describe(e)}")
            raise
        self._end_push()
        if self._folder:  # the pulled folder the engine ran on is no longer what it holds
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self.state.version, self.state.weights_sha256 = version, sha
        self._synced_for = max(self._synced_for, version)
        VERSION.set(version)
        dt = time.perf_counter() - self._push_t0
        PHASE.labels("weight_sync").observe(dt)
        log.info("pushed policy v%d (%s) in %.2fs", version, sha[:12], dt)
        self._gate.resume()
        self._sync_lock.release()

    def _end_push(self) -> None:
        if self._push_watchdog is not None:
            self._push_watchdog.cancel()
            self._push_watchdog = None

    async def _push_failed(self, why: str) -> None:
        """An update that did not finish leaves the engine's weights unknown: they are marked so (the next sync
        pulls and reloads the announced version whatever its number) and the gate stays closed until that reload
        opens it."""
        if self._push_watchdog is None:  # already handled (finish or another failure)
            return
        self._end_push()
        log.warning("weight push failed (%s): reloading the announced version over the pull path", why)
        with contextlib.suppress(Exception):
            await self.engine.finish_update()
        self.state.weights_sha256 = ""
        self._synced_for = -1
        self._sync_lock.release()

    async def _push_awaited(self) -> bool:
        """Whether a push brought the announced version within `push_wait_s` (True at once when nothing newer is
        announced); False: the caller pulls."""
        deadline = time.monotonic() + self.push_wait_s
        while True:
            if self._synced_for < 0:  # a push failed: the weights are unknown, reload over the pull path
                return False
            announced = await asyncio.to_thread(self.announced_version)
            if announced <= self.state.version:
                return True
            if time.monotonic() >= deadline:
                log.warning("no push of v%d within %.0fs: pulling it", announced, self.push_wait_s)
                return False
            await asyncio.sleep(0.2)

    def register_receiver(self, address: str) -> None:
        """Announce `address` (this worker's control port) to the trainer as a receiver of pushed weights; the
        heartbeat renews it (the trainer drops addresses that stop answering)."""
        self.receiver_address = address
        self.r.hset(redisio.weight_receivers_key(self.streams.key_prefix), address, self.consumer)

    def heartbeat(self) -> list[str]:
        ids = super().heartbeat()
        if self.pushed and self.receiver_address:
            self.register_receiver(self.receiver_address)
        return ids

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
        """Admit, sync and collect until `stop()`; then let the tasks in flight finish, for at most
        `rollout.stop_grace_s` (a gate that never reopens would otherwise hold the stop forever). WorkerBroken,
        or the grace running out, cancels them: they stay pending for a retry."""
        poll = self.cfg.rollout.poll_interval_s
        running: dict[asyncio.Task, Held] = {}
        syncing: asyncio.Task | None = None
        failures = 0
        stop_by: float | None = None
        try:
            while running or not self._stop.is_set():
                if self._stop.is_set():
                    stop_by = stop_by or time.monotonic() + self.cfg.rollout.stop_grace_s
                    if time.monotonic() >= stop_by:
                        log.warning(
                            "stopping: %d task(s) still running after rollout.stop_grace_s; they stay pending",
                            len(running),
                        )
                        break
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
