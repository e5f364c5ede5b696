"""The rollout worker's failure handling (review findings 4, 8, 9, L1, L6-L8) against real Redis, real retriever,
reward and trainer gRPC servers, with a scripted engine in place of vLLM (the third-party boundary; one char is one
token). Every test runs on both workers: the batch-synchronous RolloutWorker and the per-sample
AsyncRolloutWorker (`rollout.engine`). Nothing here starts vLLM; tests/integration/test_rollout_worker.py runs the
worker on the real engine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from searchrl.grpcutil import channel
from searchrl.proto import (
    retriever_pb2_grpc,
    reward_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
    trainer_pb2_grpc,
)
from searchrl.protocol import R1_SEARCHER as P
from searchrl.records import PromptTask, Trajectory, task_id_of
from searchrl.redisio import ensure_group, failed_key, policy_version_key
from searchrl.weightsync import WEIGHTS_FILE, WeightStore
from searchrl_rollout.async_worker import AsyncRolloutWorker
from searchrl_rollout.engine import GenOut, GenParams
from searchrl_rollout.server import RolloutServicer, grpc_score, grpc_search
from searchrl_rollout.worker import RolloutWorker, make_puller
from searchrl_trainer.server import TrainerServicer

DEAD = "prompts:dead"


class CharTokenizer:
    """One token per character (no chat template: the worker builds the base prompt)."""

    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:  # noqa: ANN001
        return "".join(chr(i) for i in ids)


class FakeEngine:
    """A scripted searcher: searches once for the question's first word (5,000 chars of it for a question
    starting LONGQUERY), then answers; a question containing POISON makes it raise. It records when each call
    ran and on which thread, and `hook` runs inside `generate` (to act while the worker is generating)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float, float]] = []
        self.loaded: list[bytes] = []
        self.hook = None

    def generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[GenOut]:
        t0 = time.perf_counter()
        if self.hook is not None:
            self.hook()
        outs = [self._segment("".join(map(chr, ids)), p) for ids, p in zip(prompts, params, strict=True)]
        self.calls.append(("generate", threading.get_ident(), t0, time.perf_counter()))
        return outs

    def _segment(self, text: str, p: GenParams) -> GenOut:
        response = text[text.rindex("Assistant: ") :]
        question = text[text.rindex("User:") + 5 : text.rindex("\nAssistant: ")]
        if "POISON" in question:
            raise RuntimeError("engine failed on this prompt")
        if P.docs_close in response:
            out = f" </think>{P.answer_open} Tirabel {P.answer_close}"
        else:
            word = question.split()[0]
            query = "Orlen " * 1000 if word == "LONGQUERY" else word
            out = f" {P.query_open} {query} {P.query_close}"
        out = out[: p.max_tokens]
        stop = P.query_close if out.endswith(P.query_close) else None
        return GenOut([ord(c) for c in out], [-0.5] * len(out), out, "stop", stop)

    def load_weights(self, directory: str) -> None:
        t0 = time.perf_counter()
        self.loaded.append((Path(directory) / WEIGHTS_FILE).read_bytes())
        self.calls.append(("load", threading.get_ident(), t0, time.perf_counter()))


class AsyncFakeEngine(FakeEngine):
    """The scripted searcher as an async engine: one request per call, yielding to the event loop in between."""

    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOut:  # type: ignore[override]
        t0 = time.perf_counter()
        if self.hook is not None:
            self.hook()
        await asyncio.sleep(0)
        out = self._segment("".join(map(chr, prompt_ids)), params)
        self.calls.append(("generate", threading.get_ident(), t0, time.perf_counter()))
        return out

    async def load_weights(self, directory: str) -> None:  # type: ignore[override]
        FakeEngine.load_weights(self, directory)


def _grpc_server(register, servicer) -> tuple[grpc.Server, str]:  # noqa: ANN001
    server = grpc.server(futures.ThreadPoolExecutor(4))
    register(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def trainer(retriever_and_reward):
    store = WeightStore(1 << 10)
    server, addr = _grpc_server(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store))
    yield store, addr
    server.stop(0)


@pytest.fixture(params=["sync", "async"])
def make_worker(request, retriever_and_reward, trainer, redis_client, tmp_path):
    store, trainer_addr = trainer
    worker, engine = (
        (AsyncRolloutWorker, AsyncFakeEngine) if request.param == "async" else (RolloutWorker, FakeEngine)
    )
    made: list[RolloutWorker] = []

    def make(consumer: str | None = "w1", search_addr: str | None = None, **rollout) -> RolloutWorker:
        cfg = retriever_and_reward.model_copy(deep=True)
        cfg.rollout.segment_tokens, cfg.rollout.max_response_tokens = 8000, 16000
        cfg.rollout.weights_dir = str(tmp_path / "weights")
        for k, v in rollout.items():
            setattr(cfg.rollout, k, v)
        w = worker(
            cfg,
            engine(),
            CharTokenizer(),
            grpc_search(
                retriever_pb2_grpc.RetrieverStub(
                    channel(search_addr or cfg.addresses.retriever, cfg.security)
                )
            ),
            grpc_score(reward_pb2_grpc.RewardStub(channel(cfg.addresses.reward, cfg.security))),
            make_puller(trainer_pb2_grpc.TrainerStub(channel(trainer_addr, cfg.security))),
            redis_client,
            consumer=consumer,
        )
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
        w.close()


def push(r, task_id: str, question: str = "Orlen Vask birthplace?", group_size: int = 2, **meta) -> str:  # noqa: ANN001
    t = PromptTask(task_id, question, ["Tirabel"], group_size, "r1s-stage1")
    fields = {"meta": json.dumps({**json.loads(t.encode()["meta"]), **meta})}
    return r.xadd("prompts", fields).decode()


def trajectories(r) -> dict[str, list[Trajectory]]:  # noqa: ANN001
    out: dict[str, list[Trajectory]] = {}
    for _, f in r.xrange("trajectories"):
        t = Trajectory.decode(f)
        out.setdefault(t.task_id, []).append(t)
    return out


def dead_letters(r) -> dict[str, str]:  # noqa: ANN001
    """task id (or the raw meta when unreadable) -> error of each dead-lettered entry."""
    out = {}
    for _, f in r.xrange(DEAD):
        meta = f[b"meta"].decode()
        tid = task_id_of(f)
        out[tid or meta] = f[b"error"].decode()
    return out


def test_poison_tasks_are_dead_lettered_and_the_rest_of_the_batch_is_done(make_worker, redis_client):
    r = redis_client
    w = make_worker(tasks_per_batch=8)
    push(r, "good")
    push(r, "str-size", group_size="4")
    push(r, "answers", golden_answers=5)
    push(r, "no-question", question=None)
    push(r, "huge", group_size=10**9)
    r.xadd("prompts", {"meta": "{not json"})
    push(r, "engine", question="POISON question")  # valid, but the engine fails on it: only it may go

    assert w.step(block_ms=10) == 1
    assert sorted(t.sample_index for t in trajectories(r)["good"]) == [0, 1]
    dead = dead_letters(r)
    assert set(dead) == {"str-size", "answers", "no-question", "huge", "{not json", "engine"}
    assert "meta.group_size" in dead["str-size"] and "meta.group_size" in dead["huge"]
    assert "meta.golden_answers" in dead["answers"] and "meta.question" in dead["no-question"]
    assert "engine failed on this prompt" in dead["engine"]
    failed = {k.decode(): v.decode() for k, v in r.hgetall(failed_key("searchrl")).items()}
    assert set(failed) == {"str-size", "answers", "no-question", "huge", "engine"}  # the trainer frees them
    assert r.xpending("prompts", "rollout")["pending"] == 0
    assert r.xlen("prompts") == 0  # acked entries are deleted with the ack (finding 9)


def test_keep_acked_keeps_the_prompt_entries(make_worker, redis_client):
    r = redis_client
    w = make_worker()
    w.streams.keep_acked = True
    push(r, "kept", group_size=1)
    push(r, "bad", group_size=0)
    assert w.step(block_ms=10) == 1
    assert r.xlen("prompts") == 2 and r.xpending("prompts", "rollout")["pending"] == 0


def test_a_task_delivered_too_often_is_dead_lettered_alone(make_worker, redis_client):
    r = redis_client
    ensure_group(r, "prompts", "rollout")
    crashing = push(r, "crashing")
    push(r, "innocent")
    r.xreadgroup("rollout", "w1", {"prompts": ">"}, count=2)  # w1 took both, then crashed on one (twice)
    for _ in range(2):
        r.xclaim("prompts", "rollout", "w1", 0, [crashing])
    w = make_worker(consumer="w1")  # w1 restarts under its stable name: its own pending tasks come first

    assert w.step(block_ms=10) == 0  # 4th delivery of `crashing` > streams.max_deliveries=3
    assert "delivered 4 times" in dead_letters(r)["crashing"]
    assert w.step(block_ms=10) == 1
    assert set(trajectories(r)) == {"innocent"} and r.xpending("prompts", "rollout")["pending"] == 0
    assert r.xlen("prompts") == 0


def test_long_queries_are_cut_and_a_wide_round_is_split_into_retriever_sized_calls(make_worker, redis_client):
    r = redis_client
    w = make_worker()
    push(
        r, "long", question="LONGQUERY who founded Saldane Press?", group_size=10
    )  # 10 queries > max_batch 8

    assert w.step(block_ms=10) == 1
    got = trajectories(r)["long"]
    assert len(got) == 10
    for t in got:
        docs = "".join(chr(i) for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m == 0)
        assert P.docs_open in docs and "(1)" in docs  # the retriever answered: no call was rejected
        assert t.metrics["num_searches"] == 1 and t.metrics["search_failures"] == 0


def test_a_retriever_outage_leaves_the_tasks_pending(make_worker, redis_client):
    r = redis_client
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    w = make_worker(search_addr=closed)
    push(r, "t")
    with pytest.raises(grpc.RpcError) as e:
        w.step(block_ms=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert r.xpending("prompts", "rollout")["pending"] == 1
    assert r.xlen("trajectories") == 0 and r.xlen(DEAD) == 0


def test_run_forever_survives_a_failing_batch_and_stops_cleanly(make_worker, redis_client, monkeypatch):
    r = redis_client
    monkeypatch.setenv("SEARCHRL_CONSUMER", "rollout-7")
    w = make_worker(consumer=None, weights_dir="")
    assert w.consumer == "rollout-7"
    weights_dir = Path(w.weights_dir)
    assert weights_dir.is_dir()
    push(r, "poison", question="POISON question")
    push(r, "fine")
    t = threading.Thread(target=w.run_forever)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while "fine" not in trajectories(r) or "poison" not in dead_letters(r):
            assert t.is_alive() and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        w.stop()
        t.join(60)
    assert not t.is_alive()
    assert not weights_dir.exists()  # the temp weights dir goes with the worker
    assert "rollout-7" not in [c["name"].decode() for c in r.xinfo_consumers("prompts", "rollout")]


def test_the_consumer_name_is_stable_and_a_holder_stays_in_the_group(make_worker, redis_client, monkeypatch):
    r = redis_client
    monkeypatch.delenv("SEARCHRL_CONSUMER", raising=False)
    w = make_worker(consumer=None)
    assert w.consumer == f"{socket.gethostname()}-{w.cfg.rollout.port}"
    push(r, "held")
    r.xreadgroup("rollout", w.consumer, {"prompts": ">"})  # it holds a task when it stops
    w.close()
    assert w.consumer in [c["name"].decode() for c in r.xinfo_consumers("prompts", "rollout")]


def test_a_task_taken_over_by_another_worker_is_skipped(make_worker, redis_client):
    r = redis_client
    w = make_worker()
    eid = push(r, "stolen")
    w.engine.hook = lambda: r.xclaim("prompts", "rollout", "other", 0, [eid])  # reclaimed mid-generation
    assert w.step(block_ms=10) == 0
    assert r.xlen("trajectories") == 0
    (p,) = r.xpending_range("prompts", "rollout", "-", "+", 10)
    assert p["consumer"] == b"other"  # still the other worker's, to finish and ack


def _status_version(stub) -> int:  # noqa: ANN001
    return stub.GetStatus(rollout_pb2.RolloutStatusRequest(), timeout=10).policy.version


def test_sync_weights_rpc_never_reloads_while_the_loop_generates(make_worker, redis_client, trainer):
    store, _ = trainer
    pub = store.publish(1, b"weights-v1")
    w = make_worker()
    server, addr = _grpc_server(rollout_pb2_grpc.add_RolloutServicer_to_server, RolloutServicer(w))
    stub = rollout_pb2_grpc.RolloutStub(channel(addr, w.cfg.security))
    replies: list[int] = []

    def sync_during_generation() -> None:
        w.engine.hook = None
        redis_client.set(policy_version_key("searchrl"), 1)  # the trainer commits v1 and asks the worker
        caller = threading.Thread(
            target=lambda: replies.append(
                stub.SyncWeights(rollout_pb2.SyncWeightsRequest(min_version=1), timeout=60).policy.version
            )
        )
        caller.start()
        caller.join(60)

    w.engine.hook = sync_during_generation
    push(redis_client, "t")
    try:
        assert w.step(block_ms=10) == 1
        assert replies == [0]  # answered at once, with the status it had
        w.step(block_ms=10)  # the loop applies the request between batches
        assert _status_version(stub) == 1 and w.state.weights_sha256 == pub.sha256
    finally:
        server.stop(0)
    gens = [c for c in w.engine.calls if c[0] == "generate"]
    loads = [c for c in w.engine.calls if c[0] == "load"]
    assert len(loads) == 1 and {c[1] for c in w.engine.calls} == {threading.get_ident()}
    assert all(g[3] <= ld[2] or ld[3] <= g[2] for g in gens for ld in loads)


def test_a_version_nobody_announced_never_stalls_the_loop(make_worker, redis_client):
    w = make_worker(weights_pull_timeout_s=1.0)
    push(redis_client, "future", min_policy_version=10**12)
    w.request_sync(10**12)
    assert w.step(block_ms=10) == 1  # served with the held weights: no pull waiting for v10^12
    assert w.engine.loaded == [] and trajectories(redis_client)["future"][0].policy_version == 0


def test_weights_reload_when_the_announced_version_or_the_sha_differs(make_worker, redis_client, trainer):
    r = redis_client
    store, _ = trainer
    w = make_worker()
    foreign = Path(w.weights_dir) / "v8-another-worker"  # a folder of another worker sharing the directory
    foreign.mkdir(parents=True)

    store.publish(8, b"A")  # stored in the trainer but not committed to Redis yet: a worker pulls the newest
    r.set(policy_version_key("searchrl"), 7)
    w.step(block_ms=10)
    assert (w.state.version, w.engine.loaded) == (8, [b"A"])

    store.publish(8, b"B")  # the trainer crashed and re-trained step 8 from its checkpoint: same number
    r.set(policy_version_key("searchrl"), 8)
    w.step(block_ms=10)
    w.step(block_ms=10)  # nothing new announced: no pull, no reload
    assert (w.state.version, w.engine.loaded) == (8, [b"A", b"B"])

    store.publish(3, b"C")  # Redis state lost, the trainer starts over at a lower number
    r.set(policy_version_key("searchrl"), 3)
    w.step(block_ms=10)
    assert (w.state.version, w.engine.loaded) == (3, [b"A", b"B", b"C"])

    mine = [p for p in Path(w.weights_dir).iterdir() if p != foreign]
    assert len(mine) == 1 and (mine[0] / WEIGHTS_FILE).read_bytes() == b"C"  # older ones of its own removed
    assert foreign.is_dir()  # never another worker's
    w.close()
    assert [p for p in Path(w.weights_dir).iterdir()] == [foreign]


def test_a_worker_that_fails_every_task_exits_instead_of_dead_lettering_the_queue(make_worker, redis_client):
    """A worker whose engine fails on every prompt (say vLLM died) is what is broken, not the tasks: after
    BROKEN_AFTER different tasks failed alone in a row it exits (to be restarted), leaving the rest pending."""
    from searchrl_rollout.worker import BROKEN_AFTER, WorkerBroken

    r = redis_client
    w = make_worker(tasks_per_batch=1, max_concurrent=2)  # one task of 2 samples at a time
    for i in range(BROKEN_AFTER + 2):
        push(r, f"p{i}", question=f"POISON question {i}")
    with pytest.raises(WorkerBroken, match=f"{BROKEN_AFTER} different tasks failed alone"):
        w.run_forever()
    assert len(dead_letters(r)) == BROKEN_AFTER - 1
    assert r.xlen("prompts") == 3  # the task it broke on (still pending) and two it never took: not lost
    assert r.xpending("prompts", "rollout")["pending"] == 1


def _run_in_thread(w) -> threading.Thread:  # noqa: ANN001
    t = threading.Thread(target=w.run_forever)
    t.start()
    return t


def _wait(cond, t: threading.Thread, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert t.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("make_worker", ["async"], indirect=True)
def test_async_worker_admits_tasks_as_slots_free_up_within_max_concurrent(make_worker, redis_client):
    r = redis_client
    w = make_worker(max_concurrent=4, poll_interval_s=0.05)  # two tasks of 2 samples at a time
    in_flight: list[int] = []
    w.engine.hook = lambda: in_flight.append(len(w._inflight))
    for i in range(5):
        push(r, f"t{i}")
    t = _run_in_thread(w)
    try:
        _wait(lambda: len(trajectories(r)) == 5 and r.xpending("prompts", "rollout")["pending"] == 0, t)
    finally:
        w.stop()
        t.join(60)
    assert max(in_flight) == 2  # a second task ran next to the first, never a third
    assert all(sorted(x.sample_index for x in v) == [0, 1] for v in trajectories(r).values())
    assert w.state.tasks_done == 5 and r.xlen("prompts") == 0


@pytest.mark.parametrize("make_worker", ["async"], indirect=True)
def test_async_worker_reloads_between_segments_and_labels_a_sample_by_its_first_version(
    make_worker, redis_client, trainer
):
    """A new version is announced while a sample waits for its search: the weights are pulled and reloaded
    before its next segment; the trajectory carries the version of its first segment and counts two."""
    store, _ = trainer
    r = redis_client
    pub = store.publish(1, b"weights-v1")
    w = make_worker(poll_interval_s=0.05)
    search = w._batcher.search_fn

    def search_during_a_new_version(queries: list[str], k: int):  # noqa: ANN202
        r.set(policy_version_key("searchrl"), 1)  # the trainer commits v1
        deadline = time.monotonic() + 60
        while not w.engine.loaded and time.monotonic() < deadline:  # the loop reloads meanwhile
            time.sleep(0.01)
        return search(queries, k)

    w._batcher.search_fn = search_during_a_new_version
    push(r, "straddle", group_size=1)
    t = _run_in_thread(w)
    try:
        _wait(lambda: "straddle" in trajectories(r), t)
    finally:
        w.stop()
        t.join(60)
    (traj,) = trajectories(r)["straddle"]
    assert traj.policy_version == 0 and traj.metrics["policy_versions"] == 2.0
    assert (w.state.version, w.state.weights_sha256) == (1, pub.sha256)
    assert [c[0] for c in w.engine.calls] == ["generate", "load", "generate"]


# ---- pushed weights (trainer.weight_sync: nccl | gloo): a push that fails or never comes costs a pull, never a
# sample generated on half-loaded weights ---------------------------------------------------------------------


class PushFakeEngine(AsyncFakeEngine):
    """AsyncFakeEngine with vLLM's weight-transfer calls; `update` raises when `fail_update` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_update = False

    async def init_transfer(self, init_info: dict) -> None:
        self.calls.append(("init", threading.get_ident(), 0.0, 0.0))

    async def start_update(self) -> None:
        self.calls.append(("start", threading.get_ident(), 0.0, 0.0))

    async def update(self, update_info: dict) -> None:
        if self.fail_update:
            raise RuntimeError("Connection closed by peer")  # the trainer died mid-broadcast
        self.calls.append(("update", threading.get_ident(), 0.0, 0.0))

    async def finish_update(self) -> None:
        self.calls.append(("finish", threading.get_ident(), 0.0, 0.0))


def _pushing_worker(make_worker) -> AsyncRolloutWorker:  # noqa: ANN001
    w = make_worker(poll_interval_s=0.05)
    w.engine = PushFakeEngine()
    w.pushed, w.push_wait_s, w.push_timeout_s = True, 1.0, 1.0
    w.register_receiver("127.0.0.1:1")
    return w


@pytest.mark.parametrize("make_worker", ["async"], indirect=True)
def test_a_finished_push_is_adopted_and_nothing_is_pulled(make_worker, redis_client):
    r = redis_client
    w = _pushing_worker(make_worker)
    assert r.hget("searchrl:weight_receivers", "127.0.0.1:1") == b"w1"
    t = _run_in_thread(w)
    try:
        w.on_loop(w.push_start(), 60)
        w.on_loop(w.push_update({}), 60)
        w.on_loop(w.push_finish(4, "sha-of-v4"), 60)
        r.set(policy_version_key("searchrl"), 4)
        push(r, "after-push", group_size=1)
        _wait(lambda: "after-push" in trajectories(r), t)
    finally:
        w.stop()
        t.join(60)
    assert (w.state.version, w.state.weights_sha256) == (4, "sha-of-v4")
    assert trajectories(r)["after-push"][0].policy_version == 4
    assert w.engine.loaded == []  # no pull
    kinds = [c[0] for c in w.engine.calls]
    assert kinds[:3] == ["start", "update", "finish"] and "generate" in kinds


@pytest.mark.parametrize("make_worker", ["async"], indirect=True)
@pytest.mark.parametrize("failure", ["update raises", "no finish"])
def test_a_failed_push_reloads_the_held_version_before_anything_generates(
    make_worker, redis_client, trainer, failure
):
    """The worker holds v5; the push of v6 (not announced yet) fails: the trainer dies mid-broadcast (update
    raises) or after start (no finish within push_timeout_s). The engine's weights are then unknown, so the worker
    reloads the announced version, the very number it held, and only then generates again."""
    store, _ = trainer
    r = redis_client
    pub = store.publish(5, b"weights-v5")
    r.set(policy_version_key("searchrl"), 5)
    w = _pushing_worker(make_worker)
    w.step(block_ms=10)  # a normal pull of v5 at start-up (nothing pushed it within push_wait_s)
    assert w.engine.loaded == [b"weights-v5"]
    t = _run_in_thread(w)
    try:
        w.on_loop(w.push_start(), 60)
        if failure == "update raises":
            w.engine.fail_update = True
            with pytest.raises(RuntimeError, match="closed by peer"):
                w.on_loop(w.push_update({}), 60)
        push(r, "after-failure", group_size=1)
        _wait(lambda: "after-failure" in trajectories(r), t)
    finally:
        w.stop()
        t.join(60)
    kinds = [c[0] for c in w.engine.calls]
    assert w.engine.loaded == [b"weights-v5", b"weights-v5"]
    after = kinds[kinds.index("start") :]
    assert after.index("load") < after.index("generate")  # nothing generated on the half-pushed weights
    assert (w.state.version, w.state.weights_sha256) == (5, pub.sha256)
    assert trajectories(r)["after-failure"][0].policy_version == 5


@pytest.mark.parametrize("make_worker", ["async"], indirect=True)
def test_stopping_a_worker_whose_gate_stays_closed_leaves_its_task_pending(make_worker, redis_client):
    """A push fails and no version can be pulled (the trainer is gone), so the gate stays closed and a sample
    admitted meanwhile can never generate. `stop()` must still end the loop after rollout.stop_grace_s, and the
    task stays pending for another worker: nothing written, nothing acknowledged."""
    r = redis_client
    w = _pushing_worker(make_worker)
    w.cfg.rollout.stop_grace_s = 0.5
    w.engine.fail_update = True

    def trainer_gone(min_version: int, directory: str, timeout_s: float):  # noqa: ANN202
        time.sleep(0.2)
        raise ConnectionError("trainer unreachable")

    w.pull = trainer_gone
    t = _run_in_thread(w)
    w.on_loop(w.push_start(), 60)
    with pytest.raises(RuntimeError, match="closed by peer"):
        w.on_loop(w.push_update({}), 60)
    push(r, "stuck", group_size=1)
    _wait(lambda: r.xpending("prompts", "rollout")["pending"] == 1, t)
    w.stop()
    t.join(30)
    assert not t.is_alive()
    assert "stuck" not in trajectories(r) and r.xpending("prompts", "rollout")["pending"] == 1
    assert not [c for c in w.engine.calls if c[0] == "generate"]


@pytest.mark.parametrize("make_worker", ["async"], indirect=True)
def test_a_version_no_push_brings_is_pulled_after_the_push_wait(make_worker, redis_client, trainer):
    store, _ = trainer
    r = redis_client
    store.publish(6, b"weights-v6")
    w = _pushing_worker(make_worker)
    r.set(policy_version_key("searchrl"), 6)
    t0 = time.monotonic()
    w.step(block_ms=10)
    assert w.engine.loaded == [b"weights-v6"] and w.state.version == 6
    assert time.monotonic() - t0 >= w.push_wait_s  # the push was awaited first
    w.close()


@pytest.mark.parametrize("make_worker", ["sync"], indirect=True)
def test_push_rpcs_on_a_sync_worker_fail_with_a_precondition(make_worker):
    w = make_worker()
    server, addr = _grpc_server(rollout_pb2_grpc.add_RolloutServicer_to_server, RolloutServicer(w))
    try:
        stub = rollout_pb2_grpc.RolloutStub(grpc.insecure_channel(addr))
        with pytest.raises(grpc.RpcError) as e:
            stub.StartWeightUpdate(rollout_pb2.RolloutStatusRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "rollout.engine" in e.value.details()
    finally:
        server.stop(0)
