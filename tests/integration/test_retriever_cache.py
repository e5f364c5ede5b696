"""The query cache around the real dense back end (tiny world): an in-process LRU and a shared one in the real
Redis (fixture `redis_client`), keyed by query, k and the back end's fingerprint; hits skip the back end, partial
answers are never cached, a dead Redis only costs hits, and the hit ratio is exported."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY

from searchrl.redisio import free_port
from searchrl_retriever.backend import DenseBackend, Results, ShardError, build_dense
from searchrl_retriever.batcher import Batcher
from searchrl_retriever.cache import QueryCache, shared_client
from searchrl_retriever.service import Retriever
from tests.integration.test_retriever_batching import Recording


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from tests.conftest import tiny_config_at

    index, embedder = build_dense(tiny_config_at(tmp_path_factory.mktemp("run")), progress=False)
    return DenseBackend(index, embedder)


def _retriever(backend, cache: QueryCache) -> Retriever:
    return Retriever(backend, Batcher(backend, 64, 0.0), 8, 50, 2048, cache)


def _ids(rows) -> list[list[str]]:
    return [[h.passage.id for h in row] for row in rows]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_lru_hits_skip_the_back_end_and_k_and_fingerprint_are_part_of_the_key(dense):
    backend = Recording(dense)
    r = _retriever(backend, QueryCache(entries=2))
    first = r.search(["Tirabel", "Lake Venn city"], 2)
    hits_before = _sample("searchrl_retriever_cache_lookups_total", tier="lru", result="hit")
    again = r.search(["Lake Venn city", "Tirabel"], 2)
    assert _ids(again) == _ids(first)[::-1] and len(backend.batches) == 1  # both from the cache
    assert _sample("searchrl_retriever_cache_lookups_total", tier="lru", result="hit") == hits_before + 2
    assert 0 < _sample("searchrl_retriever_cache_hit_ratio", tier="lru") <= 1
    r.search(["Tirabel"], 1)  # another k: a miss
    assert backend.batches[-1] == (["Tirabel"], 1)
    backend.fingerprint = "dense:another-index"
    r.search(["Tirabel"], 1)  # another index: a miss
    assert len(backend.batches) == 3
    r.search(["Ostravel"], 1)  # a third entry evicts the least recently used ("Lake Venn city", 2)
    r.search(["Lake Venn city"], 2)
    assert backend.batches[-1] == (["Lake Venn city"], 2)
    r.close()


def test_redis_shares_answers_between_replicas_with_a_ttl(dense, redis_server, redis_client):
    a, b = Recording(dense), Recording(dense)
    ra = _retriever(a, QueryCache(0, shared_client(redis_server.url), ttl_s=60))
    rb = _retriever(b, QueryCache(0, shared_client(redis_server.url), ttl_s=60))
    rows = ra.search(["Saldane Press founder", "Tirabel"], 2)
    assert _ids(rb.search(["Tirabel", "Saldane Press founder"], 2)) == _ids(rows)[::-1]
    assert b.batches == []  # replica b never searched
    rows_b = rb.search(["Tirabel", "Saldane Press founder"], 2)
    assert [[(h.passage, h.score) for h in row] for row in rows_b] == [
        [(h.passage, h.score) for h in row] for row in rows[::-1]
    ]
    keys = redis_client.keys("searchrl:retriever:cache:*")
    assert len(keys) == 2 and all(0 < redis_client.ttl(k) <= 60 for k in keys)
    ra.close()
    rb.close()


def test_a_dead_redis_costs_only_hits(dense):
    backend = Recording(dense)
    errors = _sample("searchrl_retriever_cache_errors_total")
    r = _retriever(backend, QueryCache(0, shared_client(f"redis://127.0.0.1:{free_port()}/0"), ttl_s=60))
    assert _ids(r.search(["Tirabel"], 1)) == _ids(dense.search_batch(["Tirabel"], 1))
    assert _sample("searchrl_retriever_cache_errors_total") >= errors + 2  # the lookup and the store
    r.close()


class Partial(Recording):
    """The dense back end answering as a router whose shard 1 missed its deadline."""

    def search_batch(self, queries, k):
        rows = super().search_batch(queries, k)
        return Results(list(rows), (ShardError(1, "shard-1:50051", "DEADLINE_EXCEEDED", "too slow"),))


def test_partial_answers_are_returned_with_their_errors_and_never_cached(dense):
    backend = Partial(dense)
    r = _retriever(backend, QueryCache(entries=8))
    rows = r.search(["Tirabel"], 1)
    assert rows.partial and rows.shard_errors[0].code == "DEADLINE_EXCEEDED"
    r.search(["Tirabel"], 1)
    assert len(backend.batches) == 2
    r.close()


def test_partial_answers_tell_grpc_and_http_callers(dense):
    from searchrl.config import SecurityConfig
    from searchrl.grpcutil import Server, channel
    from searchrl.proto import retriever_pb2, retriever_pb2_grpc
    from searchrl_retriever.http_api import HttpServer
    from searchrl_retriever.server import RetrieverServicer

    r = _retriever(Partial(dense), QueryCache(0))
    server = Server(free_port(), 0, 4, SecurityConfig())
    server.add(
        retriever_pb2_grpc.add_RetrieverServicer_to_server, RetrieverServicer(r), "searchrl.v1.Retriever"
    )
    server.start()
    http = HttpServer(r, "127.0.0.1", free_port(), SecurityConfig(), 4, 32)
    http.start()
    try:
        stub = retriever_pb2_grpc.RetrieverStub(channel(f"127.0.0.1:{server.port}", SecurityConfig()))
        resp, call = stub.Search.with_call(
            retriever_pb2.SearchRequest(queries=["Tirabel"], top_k=1), timeout=30
        )
        assert len(resp.results[0].passages) == 1
        trailers = dict(call.trailing_metadata())
        assert "shard 1 (shard-1:50051): DEADLINE_EXCEEDED" in trailers["searchrl-shard-errors"]
        got = httpx.post(f"http://127.0.0.1:{http.port}/queries", json={"queries": ["Tirabel"]}, timeout=30)
        assert got.status_code == 200 and "DEADLINE_EXCEEDED" in got.headers["x-searchrl-shard-errors"]
    finally:
        http.stop()
        server.stop(0)
        r.close()
