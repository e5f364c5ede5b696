"""The retriever as a domain object: validate a search, then answer it through the batcher.

`open_retriever(cfg)` opens the configured back end (backend.py) behind a `Batcher` and returns a `Retriever`
whose `search(queries, top_k)` is what the gRPC servicer, the HTTP APIs and the in-process tools (eval, naive
RAG) call. Validation errors are `InvalidArgument`s naming the caller's request field; a request is validated
before it joins a batch, so a bad one never fails the others.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout

from searchrl.config import Config
from searchrl.grpcutil import InvalidArgument
from searchrl_retriever.backend import Backend, Hit, open_backend
from searchrl_retriever.batcher import Batcher
from searchrl_retriever.metrics import QUERIES


class Retriever:
    """Validated search through the batcher: what the gRPC servicer, the HTTP API and the in-process tools call.
    Thread-safe; concurrent calls are coalesced by the batcher."""

    def __init__(
        self, backend: Backend, batcher: Batcher, max_batch: int, max_top_k: int, max_query_chars: int
    ) -> None:
        self.backend = backend
        self.batcher = batcher
        self.max_batch = max_batch
        self.max_top_k = max_top_k
        self.max_query_chars = max_query_chars

    def validate(
        self, queries: list[str], top_k: int, fields: tuple[str, str] = ("queries", "top_k")
    ) -> None:
        """InvalidArgument naming the field; `fields` are the request's names of (queries, top_k)."""
        qf, kf = fields
        if not queries:
            raise InvalidArgument(qf, "must hold at least one query")
        if len(queries) > self.max_batch:
            raise InvalidArgument(qf, f"{len(queries)} queries exceed the limit of {self.max_batch}")
        for i, q in enumerate(queries):
            if not q.strip():
                raise InvalidArgument(f"{qf}[{i}]", "is empty")
            if len(q) > self.max_query_chars:
                raise InvalidArgument(f"{qf}[{i}]", f"has {len(q)} chars, limit {self.max_query_chars}")
        if not 1 <= top_k <= self.max_top_k:
            raise InvalidArgument(kf, f"must be in [1, {self.max_top_k}], got {top_k}")

    def search(
        self,
        queries: list[str],
        top_k: int,
        timeout: float | None = None,
        api: str = "local",
        fields: tuple[str, str] = ("queries", "top_k"),
    ) -> list[list[Hit]]:
        """Rows of hits, best first, one per query. Validated first (InvalidArgument naming `fields`, the caller's
        names of queries and top_k), so a bad request never joins a batch; TimeoutError when not answered within
        `timeout` seconds."""
        self.validate(queries, top_k, fields)
        future = self.batcher.submit(queries, top_k)
        try:
            rows = future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:.1f}s") from None
        QUERIES.labels(api).inc(len(queries))
        return rows

    def close(self) -> None:
        self.batcher.close()


def open_retriever(cfg: Config, progress: bool = False) -> Retriever:
    rc = cfg.retriever
    backend = open_backend(cfg, progress)
    b = rc.batching
    batcher = Batcher(backend, b.max_queries, b.max_wait_ms / 1000, b.threads)
    return Retriever(backend, batcher, rc.max_batch, rc.max_top_k, rc.max_query_chars)
