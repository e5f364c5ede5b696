"""Retriever and reward servers over real gRPC sockets: answers, health, and INVALID_ARGUMENT on bad input."""

from __future__ import annotations

import grpc
import pytest

from searchrl.grpcutil import channel, is_serving
from searchrl.proto import retriever_pb2, retriever_pb2_grpc, reward_pb2, reward_pb2_grpc


@pytest.fixture(scope="module")
def services(retriever_and_reward):
    return retriever_and_reward


def _retriever(cfg):
    return retriever_pb2_grpc.RetrieverStub(channel(f"127.0.0.1:{cfg.retriever.port}", cfg.security))


def _reward(cfg):
    return reward_pb2_grpc.RewardStub(channel(f"127.0.0.1:{cfg.reward.port}", cfg.security))


def test_health(services):
    assert is_serving(f"127.0.0.1:{services.retriever.port}", services.security)
    assert is_serving(f"127.0.0.1:{services.reward.port}", services.security)


def test_prometheus_metrics_count_requests(services):
    import urllib.request

    _reward(services).Score(
        reward_pb2.ScoreRequest(
            preset="r1s-stage1",
            items=[reward_pb2.ScoreItem(question="q", response="r", golden_answers=["a"])],
        ),
        timeout=10,
    )
    _retriever(services).Search(retriever_pb2.SearchRequest(queries=["Tirabel"], top_k=1), timeout=30)
    for port, metric in (
        (services.reward.metrics_port, 'searchrl_reward_items_total{preset="r1s-stage1"}'),
        (services.retriever.metrics_port, "searchrl_retriever_queries_total"),
    ):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        line = next(x for x in body.splitlines() if x.startswith(metric))
        assert float(line.split()[-1]) >= 1


def test_search_finds_the_right_passage_in_batch(services):
    resp = _retriever(services).Search(
        retriever_pb2.SearchRequest(queries=["Saldane Press founder", "Lake Venn city"], top_k=2), timeout=30
    )
    assert len(resp.results) == 2 and all(len(r.passages) == 2 for r in resp.results)
    assert "Saldane Press" in resp.results[0].passages[0].title + resp.results[0].passages[0].text
    assert resp.results[1].passages[0].title == "Ostravel"
    assert resp.results[0].passages[0].score >= resp.results[0].passages[1].score
    info = _retriever(services).Info(retriever_pb2.InfoRequest(), timeout=10)
    assert info.num_passages == 22 and info.dim == 384 and info.device == "cpu"


@pytest.mark.parametrize(
    "request_kwargs, field",
    [
        ({"queries": [], "top_k": 3}, "queries"),
        ({"queries": ["a"] * 9, "top_k": 3}, "queries"),
        ({"queries": ["a", "  "], "top_k": 3}, "queries[1]"),
        ({"queries": ["a"], "top_k": 0}, "top_k"),
        ({"queries": ["a"], "top_k": 51}, "top_k"),
        ({"queries": ["x" * 5000], "top_k": 1}, "queries[0]"),
    ],
)
def test_search_rejects_bad_requests(services, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as e:
        _retriever(services).Search(retriever_pb2.SearchRequest(**request_kwargs), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field + ":")
    assert is_serving(f"127.0.0.1:{services.retriever.port}", services.security)  # still up


def test_score_in_order(services):
    items = [
        reward_pb2.ScoreItem(
            question="q", response="</think><answer> Tirabel </answer>", golden_answers=["Tirabel"]
        ),
        reward_pb2.ScoreItem(
            question="q", response="</think><answer> Paris </answer>", golden_answers=["Tirabel"]
        ),
    ]
    resp = _reward(services).Score(reward_pb2.ScoreRequest(preset="r1s-stage2", items=items), timeout=10)
    assert [s.f1 for s in resp.scores] == [1.0, 0.0]
    assert [s.reward for s in resp.scores] == [1.0, 0.0]


@pytest.mark.parametrize(
    "preset, items, field",
    [
        ("nope", [reward_pb2.ScoreItem(response="r", golden_answers=["a"])], "preset"),
        ("r1s-stage1", [], "items"),
        ("r1s-stage1", [reward_pb2.ScoreItem(response="r", golden_answers=["a"])] * 5, "items"),
        ("r1s-stage1", [reward_pb2.ScoreItem(response="r", golden_answers=[])], "items[0].golden_answers"),
    ],
)
def test_score_rejects_bad_requests(services, preset, items, field):
    with pytest.raises(grpc.RpcError) as e:
        _reward(services).Score(reward_pb2.ScoreRequest(preset=preset, items=items), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field + ":")
