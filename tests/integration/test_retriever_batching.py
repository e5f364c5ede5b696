"""The dynamic batcher over the real dense back end (tiny world, MiniLM): concurrent requests are coalesced
into one `search_batch`, each gets exactly what it would get alone (its own k), and a failing batch fails only
the requests that fail alone. Batches are forced deterministically: a long max wait and a max batch equal to
the queries submitted, so the batch closes when the last request arrives, never on a timer."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY

from searchrl.grpcutil import InvalidArgument
from searchrl_retriever.backend import DenseBackend, Hit, build_dense
from searchrl_retriever.batcher import Batcher, BatcherClosed


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from tests.conftest import tiny_config_at

    index, embedder = build_dense(tiny_config_at(tmp_path_factory.mktemp("run")), progress=False)
    return DenseBackend(index, embedder)


class Recording:
    """The dense back end, recording each batch it is given and refusing queries that contain `poison`."""

    def __init__(self, inner: DenseBackend, poison: str = "\0") -> None:
        self.inner, self.poison = inner, poison
        self.fingerprint = inner.fingerprint
        self.batches: list[tuple[list[str], int]] = []
        self.lock = threading.Lock()

    def info(self):
        return self.inner.info()

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        with self.lock:
            self.batches.append((list(queries), k))
        for i, q in enumerate(queries):
            if self.poison in q:
                raise InvalidArgument(f"queries[{i}]", "poisoned")
        return self.inner.search_batch(queries, k)


METRICS = (
    "searchrl_retriever_batch_queries_count",
    "searchrl_retriever_batch_queries_sum",
    "searchrl_retriever_batch_requests_sum",
    "searchrl_retriever_queue_wait_seconds_count",
    "searchrl_retriever_stage_seconds_count",
)


def _sample(name: str) -> float:
    labels = {"stage": "encode", "shard": ""} if name.startswith("searchrl_retriever_stage") else {}
    return REGISTRY.get_sample_value(name, labels) or 0.0


REQUESTS = [(["Saldane Press founder"], 1), (["Lake Venn city", "Ostravel"], 3), (["Tirabel"], 2)]


def _ids(rows: list[list[Hit]]) -> list[list[str]]:
    return [[h.passage.id for h in row] for row in rows]


def test_concurrent_requests_become_one_batch_and_each_gets_its_own_k(dense):
    backend = Recording(dense)
    before = {m: _sample(m) for m in METRICS}
    batcher = Batcher(backend, max_queries=sum(len(q) for q, _ in REQUESTS), max_wait_s=60.0)
    try:
        futures = [batcher.submit(q, k) for q, k in REQUESTS]
        results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert backend.batches == [(["Saldane Press founder", "Lake Venn city", "Ostravel", "Tirabel"], 3)]
    grew = {m: _sample(m) - before[m] for m in METRICS}
    assert grew == {
        "searchrl_retriever_batch_queries_count": 1,
        "searchrl_retriever_batch_queries_sum": 4,
        "searchrl_retriever_batch_requests_sum": 3,
        "searchrl_retriever_queue_wait_seconds_count": 3,  # one wait per request
        "searchrl_retriever_stage_seconds_count": 1,  # encode, one per batch
    }
    for (queries, k), got in zip(REQUESTS, results, strict=True):
        assert _ids(got) == _ids(dense.search_batch(queries, k))
        assert all(len(row) == k for row in got)


def test_a_full_batch_leaves_the_rest_for_the_next_one(dense):
    backend = Recording(dense)
    batcher = Batcher(backend, max_queries=2, max_wait_s=60.0)
    try:
        futures = [batcher.submit(q, k) for q, k in REQUESTS]  # 1 + 2 + 1 queries: [1], [2], [1]
        # the last is alone and its batch is not full, but the batch before held one request: it goes at once
        for f in futures:
            f.result(timeout=30)
    finally:
        batcher.close()
    assert [len(q) for q, _ in backend.batches] == [1, 2, 1]


def test_a_batch_waits_until_the_previous_batchs_callers_are_back(dense):
    backend = Recording(dense)
    batcher = Batcher(backend, max_queries=4, max_wait_s=60.0)
    try:
        first = [batcher.submit(q, 1) for q in (["Tirabel"], ["Dasko"], ["Ostravel", "Lake Venn city"])]
        for f in first:  # full: one batch of three requests
            f.result(timeout=30)
        lone = batcher.submit(["Saldane Press founder"], 1)
        with pytest.raises(TimeoutError):
            lone.result(timeout=0.5)  # one of three callers is back: it waits for company
        rest = [batcher.submit([q], 1) for q in ("Holm", "Corvath")]
        for f in [lone, *rest]:  # three requests (3 of 4 queries: not full) are queued again: they go at once
            f.result(timeout=30)
    finally:
        batcher.close()
    assert [len(q) for q, _ in backend.batches] == [4, 3]


def test_a_failing_batch_fails_only_the_requests_that_fail_alone(dense):
    backend = Recording(dense, poison="boom")
    batcher = Batcher(backend, max_queries=4, max_wait_s=60.0)
    try:
        good = batcher.submit(["Saldane Press founder"], 2)
        bad = batcher.submit(["Tirabel", "boom"], 2)
        other = batcher.submit(["Lake Venn city"], 1)
        with pytest.raises(InvalidArgument) as e:
            bad.result(timeout=60)
        assert e.value.field == "queries[1]"  # as if it had been searched alone
        assert _ids(good.result(timeout=60)) == _ids(dense.search_batch(["Saldane Press founder"], 2))
        assert _ids(other.result(timeout=60)) == _ids(dense.search_batch(["Lake Venn city"], 1))
    finally:
        batcher.close()
    assert [len(q) for q, _ in backend.batches] == [4, 1, 2, 1]  # the batch, then each request alone


def test_close_answers_what_is_queued_then_refuses(dense):
    batcher = Batcher(Recording(dense), max_queries=8, max_wait_s=60.0)
    waiting = batcher.submit(["Tirabel"], 1)
    batcher.close()  # does not wait out max_wait: the queue is flushed at once
    assert _ids(waiting.result(timeout=60)) == _ids(dense.search_batch(["Tirabel"], 1))
    with pytest.raises(BatcherClosed):
        batcher.submit(["Tirabel"], 1)
