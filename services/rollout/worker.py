"""Rollout worker: prompt tasks in from Redis, scored trajectories out to Redis, weights pulled from the trainer.

One iteration (`step()`), all on the loop thread (the only thread that drives the engine):
1. sync weights when Redis announces a version other than the one last synced to (a restarted trainer may
   announce a lower number), or when a task or `SyncWeights` asks for a newer one than held (up to the announced
   version); a pulled payload whose version and sha256 equal the held ones is not reloaded;
2. take prompt tasks: first its own pending entries (after a restart under its stable consumer name), then
   entries of dead consumers idle longer than `streams.claim_idle_ms` (XAUTOCLAIM), one at a time, then up to
   `tasks_per_batch` new ones (XREADGROUP). A redelivered task whose XPENDING times_delivered exceeds
   `streams.max_deliveries` (its workers keep crashing on it), or any task that fails to decode and validate, is
   dead-lettered;
3. sample `group_size` responses per task through the search loop (one engine call per round);
4. score them (Reward.Score calls of at most `reward.max_batch` items per preset);
5. in ONE Redis transaction: XADD every trajectory, XACK and XDEL the tasks (XDEL unless `streams.keep_acked`), for the tasks this consumer still
   owns (a task reclaimed by another worker meanwhile is skipped): a crash anywhere before leaves the task
   pending, to be redone by this or another worker.
Dead-lettering is one transaction too: XADD to `<prompts>:dead` with the error, XACK + XDEL, and HSET
`<prefix>:failed` task_id -> reason so the trainer frees the task's slot.

Failures: a transient error (Redis connection/timeout, gRPC UNAVAILABLE/DEADLINE_EXCEEDED, every search call of
the batch failing so) leaves the batch's tasks pending for a retry. Any other error of a batch retries its tasks
one by one and dead-letters the task that fails alone, so one poison task costs only itself; `run_forever` never
dies on a batch. While it works, a heartbeat resets the idle time of its in-flight tasks (only those it still
owns) so live workers are never robbed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
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
from searchrl.records import PromptTask, Trajectory, task_id_of
from searchrl.weightsync import pull_weights
from searchrl_reward.rules import ScoreResult
from searchrl_reward.scorer import ScoreInput
from searchrl_rollout.engine import Engine
from searchrl_rollout.search_loop import LoopLimits, LoopTimings, Sample, build_prompt_ids, run_search_loop

log = logging.getLogger(__name__)

GROUP = "rollout"
TASKS = Counter("searchrl_rollout_tasks_total", "Prompt tasks completed")
TRAJ = Counter("searchrl_rollout_trajectories_total", "Trajectories written")
DEAD = Counter(
    "searchrl_rollout_dead_letters_total", "Prompt tasks moved to the dead-letter stream", ["reason"]
)
LOST = Counter(
    "searchrl_rollout_lost_tasks_total", "Tasks skipped: another consumer reclaimed them meanwhile"
)
SEARCH_FAILED = Counter(
    "searchrl_rollout_search_failures_total", "Samples whose search call failed (they got no documents)"
)
VERSION = Gauge("searchrl_rollout_policy_version", "Policy version being served")
PHASE = Histogram("searchrl_rollout_phase_seconds", "Time per batch phase", ["phase"])

ScoreFn = Callable[[str, list[ScoreInput]], list[ScoreResult]]
PullFn = Callable[[int, str, float], tuple[int, str, str]]  # (min_version, directory, timeout_s)
_TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


BROKEN_AFTER = 3  # different tasks failing alone in a row: the fault is in this worker, not in the tasks


def _backoff_s(failures: int) -> float:
    """Pause after `failures` failed batches (or tasks) in a row."""
    return min(2.0 * failures, 30.0)


class WorkerBroken(RuntimeError):
    """This worker cannot roll out anything (e.g. its engine died): it exits, to be restarted, instead of
    dead-lettering every task it takes."""


def is_transient(e: BaseException) -> bool:
    """An outage that retrying later may cure; anything else counts as a deterministic failure."""
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return True
    return isinstance(e, grpc.RpcError) and e.code() in _TRANSIENT_CODES


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"[:500]
    return f"{type(e).__name__}: {e}"[:500]


def consumer_name(port: int) -> str:
    """SEARCHRL_CONSUMER, else `<hostname>-<rollout port>`: stable across restarts (a restarted worker takes its
    own pending tasks back at once) and distinct for live workers on one host (each holds its own port)."""
    return os.environ.get("SEARCHRL_CONSUMER") or f"{socket.gethostname()}-{port}"


@dataclass
class WorkerState:
    version: int = 0
    weights_sha256: str = ""
    tasks_done: int = 0
    trajectories_written: int = 0


@dataclass(frozen=True)
class Held:
    """A prompt task this worker took: its stream entry id, the raw fields (for the dead-letter copy), the task."""

    eid: str
    fields: dict
    task: PromptTask


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
        self.consumer = consumer or consumer_name(cfg.rollout.port)
        self.state = WorkerState()
        self._temp_weights = not cfg.rollout.weights_dir
        self.weights_dir = cfg.rollout.weights_dir or tempfile.mkdtemp(prefix="searchrl-weights-")
        self._folder: str | None = None  # the pulled folder the engine runs on (ours to delete)
        self._failed_alone = 0  # tasks that failed on their own since the last success
        self.streams = cfg.streams
        self.version_key = redisio.policy_version_key(cfg.streams.key_prefix)
        self._synced_for = 0  # the announced version the last sync answered
        self._requested = 0  # min_version asked for by SyncWeights, applied by the loop
        self._request_lock = threading.Lock()
        self._inflight: list[str] = []
        self._inflight_lock = threading.Lock()
        self._stop = threading.Event()
        self._own_pending_left = True
        self.limits = LoopLimits.from_config(cfg.rollout, cfg.retriever)
        redisio.ensure_group(r, cfg.streams.prompts, GROUP)
        self._reclaim = redisio.Reclaimer(
            r, cfg.streams.prompts, GROUP, self.consumer, cfg.streams.claim_idle_ms
        )

    # ---- weights -------------------------------------------------------------------------------------------

    def announced_version(self) -> int:
        v = self.r.get(self.version_key)
        return int(v) if v is not None else 0

    def request_sync(self, min_version: int) -> None:
        """Ask for weights of at least `min_version` (any thread); the loop syncs before its next batch."""
        with self._request_lock:
            self._requested = max(self._requested, min_version)

    def _sync_target(self, need: int) -> int | None:
        """The announced version to pull, or None when the held weights do: Redis announces the version last
        synced to, and the held ones are at least `need` and any `request_sync` version (those two capped at the
        announced version, so neither a poison min_policy_version nor a request can make the loop wait for a
        version that may never come). Consumes the request."""
        announced = self.announced_version()
        with self._request_lock:
            need, self._requested = min(max(need, self._requested), announced), 0
        if self.state.version >= need and announced == self._synced_for:
            return None
        return announced

    def _pulled_is_held(self, version: int, sha: str, folder: str) -> bool:
        """A pulled payload with the held version and sha256 is not reloaded (its folder is removed)."""
        if (version, sha) != (self.state.version, self.state.weights_sha256):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def _adopt(self, announced: int, pulled: tuple[int, str, str] | None, t0: float) -> float:
        """After the engine loaded `pulled` (None: nothing new): record it, delete the folder it replaced;
        returns seconds since `t0`."""
        if pulled is not None:
            version, sha, folder = pulled
            if self._folder:
                shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = folder
            self.state.version, self.state.weights_sha256 = version, sha
            VERSION.set(version)
            log.info("loaded policy v%d (%s) in %.2fs", version, sha[:12], time.perf_counter() - t0)
        self._synced_for = announced
        dt = time.perf_counter() - t0
        PHASE.labels("weight_sync").observe(dt)
        return dt

    def _sync(self, need: int) -> float:
        """Loop thread only. Pull the newest weights when `_sync_target` names a version; a payload with the held
        version and sha256 is not reloaded. Returns seconds spent."""
        announced = self._sync_target(need)
        if announced is None:
            return 0.0
        t0 = time.perf_counter()
        pulled = self.pull(announced, self.weights_dir, self.cfg.rollout.weights_pull_timeout_s)
        if self._pulled_is_held(*pulled):
            return self._adopt(announced, None, t0)
        self.engine.load_weights(pulled[2])
        return self._adopt(announced, pulled, t0)

    # ---- task intake ----------------------------------------------------------------------------------------

    def _intake(self, block_ms: int | None, n: int) -> tuple[list[redisio.Entry], bool]:
        """Entries to work on (at most `n` new ones; block_ms None: do not wait), and whether they are
        redeliveries. Redelivered ones come one at a time, so a task that kills its worker takes no other task
        down with it."""
        s = self.streams
        if self._own_pending_left:
            own = redisio.own_pending(self.r, s.prompts, GROUP, self.consumer, 1)
            if own:
                return own, True
            self._own_pending_left = False
        taken = self._reclaim(1)
        if taken:
            log.warning("reclaimed %d prompt task(s) from dead consumers", len(taken))
            return taken, True
        return redisio.read_group(self.r, s.prompts, GROUP, self.consumer, n, block_ms), False

    def _deliveries(self, eids: list[str]) -> dict[str, int]:
        with self.r.pipeline(transaction=False) as p:
            for eid in eids:
                p.xpending_range(self.streams.prompts, GROUP, eid, eid, 1)
            rows = p.execute()
        return {eid: row[0]["times_delivered"] for eid, row in zip(eids, rows, strict=True) if row}

    def _take(self, block_ms: int | None, n: int) -> list[Held]:
        entries, redelivered = self._intake(block_ms, n)
        counts = self._deliveries([eid for eid, _ in entries]) if redelivered else {}
        limit = self.streams.max_deliveries
        held = []
        for eid, fields in entries:
            if counts.get(eid, 1) > limit:
                reason = (
                    f"delivered {counts[eid]} times, more than streams.max_deliveries={limit} "
                    "(its workers crashed or timed out on it)"
                )
                self._dead_letter(eid, fields, reason, "deliveries")
                continue
            try:
                held.append(Held(eid, fields, PromptTask.decode(fields)))
            except Exception as e:  # noqa: BLE001 - whatever a malformed entry raises, it must not loop
                self._dead_letter(eid, fields, str(e), "malformed")
        return held

    def _dead_letter(self, eid: str, fields: dict, reason: str, kind: str) -> None:
        """One transaction: copy the entry with its error to `<prompts>:dead`, XACK + XDEL it, and report its task
        id (when readable) in `<prefix>:failed` for the trainer."""
        task_id = task_id_of(fields)
        reason = reason[:1000]
        log.error("dead-lettering prompt task %s (%s): %s", eid, task_id, reason)
        DEAD.labels(kind).inc()
        s = self.streams
        with self.r.pipeline(transaction=True) as p:
            p.xadd(f"{s.prompts}:dead", {**fields, "error": reason}, maxlen=s.maxlen, approximate=True)
            p.xack(s.prompts, GROUP, eid)
            if not s.keep_acked:
                p.xdel(s.prompts, eid)
            if task_id is not None:
                p.hset(redisio.failed_key(s.key_prefix), task_id, reason)
            p.execute()

    def heartbeat(self) -> list[str]:
        """Refresh the in-flight tasks this consumer still owns; returns their ids (lost ones are dropped)."""
        with self._inflight_lock:
            ids = list(self._inflight)
        if not ids:
            return []
        owned = redisio.touch(self.r, self.streams.prompts, GROUP, self.consumer, ids)
        lost = set(ids) - set(owned)
        if lost:
            with self._inflight_lock:
                self._inflight = [i for i in self._inflight if i not in lost]
        return owned

    # ---- one batch -------------------------------------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> int:
        """Process one batch of prompt tasks; returns the number of tasks completed (0 when idle). An exception
        leaves the tasks it did not finish pending (see the module docstring)."""
        block = int(self.cfg.rollout.poll_interval_s * 1000) if block_ms is None else block_ms
        sync_s = self._sync(0)
        held = self._take(block, self.cfg.rollout.tasks_per_batch)
        if not held:
            return 0
        with self._inflight_lock:
            self._inflight = [h.eid for h in held]
        try:
            sync_s += self._sync(max(h.task.min_policy_version for h in held))
            done, trajs = self._rollout_isolating(held, sync_s)
            done, trajs = self._commit(done, trajs)
        finally:
            with self._inflight_lock:
                self._inflight = []
        self.state.tasks_done += len(done)
        self.state.trajectories_written += len(trajs)
        TASKS.inc(len(done))
        TRAJ.inc(len(trajs))
        return len(done)

    def _rollout_isolating(self, held: list[Held], sync_s: float) -> tuple[list[Held], list[Trajectory]]:
        """Roll out the batch; if it fails for a non-transient reason, retry its tasks one by one and dead-letter
        each task that fails alone."""
        try:
            trajs = self._rollout([h.task for h in held], sync_s)
            self._failed_alone = 0
            return held, trajs
        except Exception as e:
            if is_transient(e):
                raise
            if len(held) == 1:
                self._task_failed_alone(held[0], e)
                return [], []
            log.warning("batch of %d tasks failed (%s); retrying them one by one", len(held), _describe(e))
        done, trajs = [], []
        for h in held:
            try:
                trajs += self._rollout([h.task], 0.0)
                self._failed_alone = 0
                done.append(h)
            except Exception as e:
                if is_transient(e):
                    raise
                self._task_failed_alone(h, e)
        return done, trajs

    def _task_failed_alone(self, h: Held, e: Exception) -> None:
        """Dead-letter a task that fails on its own, unless this worker has failed too many different tasks in
        a row (`_count_failed_alone`)."""
        self._count_failed_alone(e)
        self._dead_letter(h.eid, h.fields, f"failed alone: {_describe(e)}", "failed")

    def _count_failed_alone(self, e: Exception) -> None:
        """Count a task that failed on its own; after BROKEN_AFTER in a row the worker is what is broken
        (WorkerBroken; the task stays pending for a healthy one)."""
        self._failed_alone += 1
        if self._failed_alone >= BROKEN_AFTER:
            raise WorkerBroken(
                f"{self._failed_alone} different tasks failed alone in a row: {_describe(e)}"
            ) from e

    def _commit(self, done: list[Held], trajs: list[Trajectory]) -> tuple[list[Held], list[Trajectory]]:
        """ONE transaction: XADD the trajectories, XACK + XDEL the tasks, for the tasks this consumer still owns;
        returns what was written."""
        owned = set(redisio.touch(self.r, self.streams.prompts, GROUP, self.consumer, [h.eid for h in done]))
        lost = [h.task.task_id for h in done if h.eid not in owned]
        if lost:
            log.warning("skipping %d task(s) another worker reclaimed meanwhile: %s", len(lost), lost)
            LOST.inc(len(lost))
            done = [h for h in done if h.eid in owned]
            keep = {h.task.task_id for h in done}
            trajs = [t for t in trajs if t.task_id in keep]
        if not done:
            return [], []
        s = self.streams
        with self.r.pipeline(transaction=True) as p:
            for traj in trajs:
                p.xadd(s.trajectories, traj.encode(), maxlen=s.maxlen, approximate=True)
            p.xack(s.prompts, GROUP, *[h.eid for h in done])
            if not s.keep_acked:
                p.xdel(s.prompts, *[h.eid for h in done])
            p.execute()
        return done, trajs

    def _rollout(self, tasks: list[PromptTask], sync_s: float) -> list[Trajectory]:
        version = self.state.version  # weights change only between batches, on this thread
        samples = [(t, i, s) for t in tasks for i, s in enumerate(self._samples(t))]

        def tokenize(text: str) -> list[int]:
            return self.tokenizer.encode(text, add_special_tokens=False)

        loop = run_search_loop(
            self.engine, self.search, tokenize, self.protocol, [s for _, _, s in samples], self.limits
        )
        self.heartbeat()
        return self._trajectories(samples, loop, sync_s, [[version]] * len(samples))

    def _trajectories(
        self,
        samples: list[tuple[PromptTask, int, Sample]],
        loop: LoopTimings,
        sync_s: float,
        versions: list[list[int]],
    ) -> list[Trajectory]:
        """Score rolled-out samples and make their trajectories. `versions[j]`: the policy versions sample j's
        segments were generated under, in order; its `policy_version` is the first (the trainer then measures
        staleness from the oldest weights that produced it, and counts a sample begun under rolled-back weights as
        stale), `metrics.policy_versions` how many there were. Raises when every search failed transiently."""
        PHASE.labels("generate").observe(loop.generate_s)
        PHASE.labels("retrieve").observe(loop.retrieve_s)
        self._check_searches(loop, sum(s.search_failures for _, _, s in samples))
        t0 = time.perf_counter()
        scores = self._score(samples)
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
        for (task, i, s), sc, vs in zip(samples, scores, versions, strict=True):
            out.append(
                Trajectory(
                    traj_id=f"{task.task_id}/{i}",
                    task_id=task.task_id,
                    sample_index=i,
                    group_size=task.group_size,
                    policy_version=vs[0] if vs else self.state.version,
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
                        "search_failures": float(s.search_failures),
                        "policy_versions": float(len(set(vs))),
                        **share,
                    },
                    finish_reason=s.finish_reason,
                    stage=task.stage,
                )
            )
        return out

    def _samples(self, task: PromptTask) -> list[Sample]:
        """The task's `group_size` samples on one prompt, cut to rollout.max_prompt_tokens from the left."""
        rc = self.cfg.rollout
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
        base_seed = zlib.crc32(f"{self.cfg.run.seed}:{task.task_id}".encode()) if rc.temperature > 0 else None
        return [
            Sample(list(prompt), seed=None if base_seed is None else base_seed + 104729 * i)
            for i in range(task.group_size)
        ]

    def _check_searches(self, loop: LoopTimings, failed_samples: int) -> None:
        """Failed search calls cost their samples their documents; when every call failed for a transient reason
        (a retriever outage) the batch fails instead, so the tasks are retried rather than trained without
        documents."""
        errors = loop.search_errors
        if not errors:
            return
        if len(errors) == loop.search_calls and all(is_transient(e) for e in errors):
            raise errors[-1]
        SEARCH_FAILED.inc(failed_samples)
        log.warning(
            "%d of %d search calls failed (their samples got no documents): %s",
            len(errors),
            loop.search_calls,
            _describe(errors[-1]),
        )

    def _score(self, samples: list[tuple[PromptTask, int, Sample]]) -> list[ScoreResult]:
        """Rewards in sample order: Reward.Score calls per preset of at most reward.max_batch items."""
        texts = [self.tokenizer.decode(s.response_ids, skip_special_tokens=False) for _, _, s in samples]
        scores: dict[int, ScoreResult] = {}
        step = self.cfg.reward.max_batch
        for preset in sorted({t.reward_preset for t, _, _ in samples}):
            idx = [j for j, (t, _, _) in enumerate(samples) if t.reward_preset == preset]
            for k in range(0, len(idx), step):
                part = idx[k : k + step]
                got = self.score(
                    preset,
                    [
                        ScoreInput(samples[j][0].question, texts[j], samples[j][0].golden_answers)
                        for j in part
                    ],
                )
                for j, sc in zip(part, got, strict=True):
                    scores[j] = sc
        return [scores[j] for j in range(len(samples))]

    # ---- main loop -----------------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Process batches until `stop()`; a failed batch is logged and its unfinished tasks retried later (with
        backoff), never the end of the worker. Then `close()`."""
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        try:
            self._serve()
        finally:
            self._stop.set()
            hb.join()
            self.close()

    def _serve(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.step()
                failures = 0
            except WorkerBroken:
                raise  # exit non-zero: compose or Kubernetes restarts it (`searchrl up` reports it and stops)
            except Exception as e:
                failures += 1
                self._failed(e, "batch")
                self._stop.wait(_backoff_s(failures))

    def _failed(self, e: Exception, what: str) -> None:
        """Log a failure that leaves its tasks pending. Our own pending tasks now wait to be reclaimed once idle
        (by us or another worker), each reclaim counting as a delivery, instead of being re-read in a tight
        loop."""
        self._own_pending_left = False
        if is_transient(e):
            log.warning("%s failed (%s); its tasks stay pending for a retry", what, _describe(e))
        else:
            log.error("%s failed; its unfinished tasks stay pending for a retry", what, exc_info=e)

    def _heartbeat_loop(self) -> None:
        period = max(self.streams.claim_idle_ms / 3000.0, 0.05)
        while not self._stop.wait(period):
            try:
                self.heartbeat()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """After the loop stopped: leave the consumer group if this consumer holds no task (one that holds some
        stays, so they remain visible and claimable), and delete the weights this worker pulled."""
        s = self.streams
        try:
            if not self.r.xpending_range(s.prompts, GROUP, "-", "+", 1, consumername=self.consumer):
                self.r.xgroup_delconsumer(s.prompts, GROUP, self.consumer)
        except redis.RedisError as e:
            log.warning("could not leave the consumer group: %s", e)
        if self._temp_weights:
            shutil.rmtree(self.weights_dir, ignore_errors=True)
        elif self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None


def make_puller(trainer_stub) -> PullFn:  # noqa: ANN001
    """`pull(min_version, directory, timeout_s)`: retries while the version is not published yet or the trainer
    restarts, for up to `timeout_s`, each stream with that deadline."""

    def pull(min_version: int, directory: str, timeout_s: float) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return pull_weights(trainer_stub, min_version, directory, timeout=timeout_s)
            except Exception as e:  # noqa: BLE001 - not published yet / trainer restarting: wait and retry
                if time.monotonic() > deadline:
                    raise
                log.info("weights v%d not available yet (%s); waiting", min_version, str(e)[:200])
                time.sleep(1.0)

    return pull
