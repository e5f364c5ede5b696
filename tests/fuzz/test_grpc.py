"""Every gRPC method of the four services gets >= 1,000 generated bad inputs (tests/fuzz/grpc_driver.py says
which and how each reply is judged): no crash, no hang past the deadline, every reply the documented one, and the
service healthy afterwards (health SERVING and a valid call still succeeds)."""

from __future__ import annotations

import hashlib
import math

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searchrl.proto import retriever_pb2, reward_pb2, rollout_pb2, trainer_pb2
from searchrl_reward.rules import PRESETS
from tests.fuzz.grpc_driver import OK, Api, assert_healthy, inputs, send
from tests.fuzz.strategies import INT32, INT64, SETTINGS, ints, lists_of, mostly, texts

pytestmark = pytest.mark.fuzz

EXAMPLES = 1000
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def run_api(services, tally, api: Api) -> None:  # noqa: ANN001
    chs = services.channels[api.name.split(".")[0]]
    assert_healthy(chs, api)

    @settings(SETTINGS, max_examples=EXAMPLES)
    @given(inputs(api, services.token))
    def fuzz(item) -> None:  # noqa: ANN001
        with tally.count("gRPC method", api.name) as out:
            out.name = send(chs, api, item)

    fuzz()
    assert tally.inputs(api.name) >= EXAMPLES
    assert_healthy(chs, api)


def no_field_api(name: str, path: str, valid: object, check_ok) -> Api:  # noqa: ANN001
    """A method whose request has no fields: the only typed input is the empty message, which must be OK; the
    hostile inputs are raw bytes, bad tokens and oversized payloads."""
    return Api(name, path, type(valid), st.just(valid), lambda _: OK, check_ok, valid)


def test_retriever_search(services, tally) -> None:
    rc = services.cfg.retriever

    def expect(req: retriever_pb2.SearchRequest) -> grpc.StatusCode:
        qs = list(req.queries)
        fine = 1 <= len(qs) <= rc.max_batch and 1 <= req.top_k <= rc.max_top_k
        return OK if fine and all(q.strip() and len(q) <= rc.max_query_chars for q in qs) else INVALID

    def check_ok(req: retriever_pb2.SearchRequest, replies: list[bytes]) -> None:
        resp = retriever_pb2.SearchResponse.FromString(replies[0])
        assert len(resp.results) == len(req.queries)
        for row in resp.results:
            assert 0 < len(row.passages) <= req.top_k
            assert all(math.isfinite(p.score) and p.id for p in row.passages)

    typed = st.builds(
        retriever_pb2.SearchRequest,
        queries=lists_of(texts(rc.max_query_chars), rc.max_batch),
        top_k=mostly(st.integers(1, rc.max_top_k), ints(*INT32, rc.max_top_k)),
    )
    valid = retriever_pb2.SearchRequest(queries=["Saldane Press founder"], top_k=2)
    run_api(
        services,
        tally,
        Api("Retriever.Search", "/searchrl.v1.Retriever/Search", type(valid), typed, expect, check_ok, valid),
    )


def test_retriever_info(services, tally) -> None:
    def check_ok(req: retriever_pb2.InfoRequest, replies: list[bytes]) -> None:
        info = retriever_pb2.InfoResponse.FromString(replies[0])
        assert info.num_passages > 0 and info.dim > 0 and info.embedder

    run_api(
        services,
        tally,
        no_field_api("Retriever.Info", "/searchrl.v1.Retriever/Info", retriever_pb2.InfoRequest(), check_ok),
    )


def test_reward_score(services, tally) -> None:
    rw = services.cfg.reward

    def item_ok(i: reward_pb2.ScoreItem) -> bool:
        golds = list(i.golden_answers)
        return (
            len(i.question) <= rw.max_question_chars
            and len(i.response) <= rw.max_response_chars
            and len(golds) <= rw.max_golden_answers
            and all(len(g) <= rw.max_golden_answer_chars for g in golds)
            and any(g.strip() for g in golds)
        )

    def expect(req: reward_pb2.ScoreRequest) -> grpc.StatusCode:
        fine = req.preset in PRESETS and 1 <= len(req.items) <= rw.max_batch
        return OK if fine and all(item_ok(i) for i in req.items) else INVALID

    def check_ok(req: reward_pb2.ScoreRequest, replies: list[bytes]) -> None:
        resp = reward_pb2.ScoreResponse.FromString(replies[0])
        assert len(resp.scores) == len(req.items)
        for s in resp.scores:
            assert math.isfinite(s.reward) and all(0 <= x <= 1 for x in (s.em, s.cem, s.f1))

    item = st.builds(
        reward_pb2.ScoreItem,
        question=texts(rw.max_question_chars),
        response=texts(rw.max_response_chars),
        golden_answers=lists_of(texts(rw.max_golden_answer_chars), rw.max_golden_answers, many=100),
    )
    typed = st.builds(
        reward_pb2.ScoreRequest,
        preset=mostly(st.sampled_from(sorted(PRESETS)), texts(16)),
        items=lists_of(item, rw.max_batch, many=100),
    )
    valid = reward_pb2.ScoreRequest(
        preset="r1s-stage1",
        items=[reward_pb2.ScoreItem(question="q", response="<answer> a </answer>", golden_answers=["a"])],
    )
    run_api(
        services,
        tally,
        Api("Reward.Score", "/searchrl.v1.Reward/Score", type(valid), typed, expect, check_ok, valid),
    )


def test_trainer_get_weights(services, tally) -> None:
    published = services.store.current.version

    def expect(req: trainer_pb2.WeightsRequest) -> grpc.StatusCode:
        if req.min_version < 0:
            return INVALID
        return OK if req.min_version <= published else grpc.StatusCode.FAILED_PRECONDITION

    def check_ok(req: trainer_pb2.WeightsRequest, replies: list[bytes]) -> None:
        chunks = [trainer_pb2.WeightChunk.FromString(b) for b in replies]
        assert chunks and {(c.version, c.total_bytes, c.sha256) for c in chunks} == {
            (published, chunks[0].total_bytes, chunks[0].sha256)
        }
        offsets = [c.offset for c in chunks]
        assert offsets == [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
        payload = b"".join(c.data for c in chunks)
        assert len(payload) == chunks[0].total_bytes
        assert hashlib.sha256(payload).hexdigest() == chunks[0].sha256

    typed = st.builds(trainer_pb2.WeightsRequest, min_version=ints(*INT64, published))
    valid = trainer_pb2.WeightsRequest(min_version=published)
    api = Api(
        "Trainer.GetWeights",
        "/searchrl.v1.Trainer/GetWeights",
        type(valid),
        typed,
        expect,
        check_ok,
        valid,
        streaming=True,
    )
    run_api(services, tally, api)


def test_trainer_get_status(services, tally) -> None:
    def check_ok(req: trainer_pb2.TrainerStatusRequest, replies: list[bytes]) -> None:
        status = trainer_pb2.TrainerStatus.FromString(replies[0])
        assert status.policy.version == services.store.current.version
        assert status.groups_needed == services.cfg.trainer.groups_per_step

    run_api(
        services,
        tally,
        no_field_api(
            "Trainer.GetStatus",
            "/searchrl.v1.Trainer/GetStatus",
            trainer_pb2.TrainerStatusRequest(),
            check_ok,
        ),
    )


def _rollout_status(req: object, replies: list[bytes]) -> None:
    status = rollout_pb2.RolloutStatus.FromString(replies[0])
    assert status.consumer == "fuzz-grpc" and status.policy.version >= 0


def test_rollout_get_status(services, tally) -> None:
    run_api(
        services,
        tally,
        no_field_api(
            "Rollout.GetStatus",
            "/searchrl.v1.Rollout/GetStatus",
            rollout_pb2.RolloutStatusRequest(),
            _rollout_status,
        ),
    )


def test_rollout_sync_weights(services, tally) -> None:
    typed = st.builds(rollout_pb2.SyncWeightsRequest, min_version=ints(*INT64))
    valid = rollout_pb2.SyncWeightsRequest(min_version=0)
    api = Api(
        "Rollout.SyncWeights",
        "/searchrl.v1.Rollout/SyncWeights",
        type(valid),
        typed,
        lambda req: INVALID if req.min_version < 0 else OK,
        _rollout_status,
        valid,
    )
    run_api(services, tally, api)
