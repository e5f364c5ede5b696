"""The retriever as a domain object: validate a search, then answer it through the batcher.

`open_retriever(cfg)` opens the configured back end (backend.py) behind a `Batcher` and returns a `Retriever`
whose `search(queries, top_k)` is what the gRPC servicer, the HTTP APIs and the in-process tools (eval, naive
RAG) call. Validation errors are `InvalidArgument`s naming the caller's request field; a request is validated
before it joins a batch, so a bad one never fails the others.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import TimeoutError as FutureTimeout

from searchrl.config import Config, ConfigError
from searchrl.grpcutil import InvalidArgument
from searchrl_retriever.backend import Backend, Results, ShardError, open_backend
from searchrl_retriever.batcher import Batcher
from searchrl_retriever.cache import QueryCache, shared_client
from searchrl_retriever.metrics import QUERIES


class Retriever:
    """Validated search through the batcher: what the gRPC servicer, the HTTP API and the in-process tools call.
    Thread-safe; concurrent calls are coalesced by the batcher."""

    def __init__(
        self,
        backend: Backend,
        batcher: Batcher,
        max_batch: int,
        max_top_k: int,
        max_query_chars: int,
        cache: QueryCache | None = None,
    ) -> None:
        self.backend = backend
        self.batcher = batcher
        self.max_batch = max_batch
        self.max_top_k = max_top_k
        self.max_query_chars = max_query_chars
        self.cache = cache or QueryCache(0)

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
    ) -> Results:
        """Rows of hits, best first, one per query, with the shard errors of a partial answer. Validated first
        (InvalidArgument naming `fields`, the caller's names of queries and top_k), so a bad request never joins a
        batch; then the cache answers what it holds and the batcher the rest; TimeoutError when not answered
        within `timeout` seconds."""
        self.validate(queries, top_k, fields)
        fingerprint = self.backend.fingerprint
        rows = self.cache.get(fingerprint, top_k, queries)
        missing = [i for i, row in enumerate(rows) if row is None]
        errors: tuple[ShardError, ...] = ()
        if missing:
            asked = [queries[i] for i in missing]
            future = self.batcher.submit(asked, top_k)
            try:
                found = future.result(timeout=timeout)
            except FutureTimeout:
                future.cancel()
                raise TimeoutError(f"no answer within {timeout:.1f}s") from None
            errors = found.shard_errors
            if not errors:  # a partial answer is never cached
                self.cache.put(fingerprint, top_k, asked, found)
            for i, row in zip(missing, found, strict=True):
                rows[i] = row
        QUERIES.labels(api).inc(len(queries))
        return Results(rows, errors)

    def close(self) -> None:
        self.batcher.close()


def describe_shard_errors(errors: tuple[ShardError, ...]) -> str:
    """One ASCII line naming the shards missing from a partial answer (gRPC trailer, HTTP header)."""
    line = "; ".join(f"shard {e.shard} ({e.address}): {e.code} {e.message}" for e in errors)
    return line.encode("ascii", "replace").decode()[:1000]


def encoder_threads(torch_threads: int, batcher_threads: int) -> int:
    """The encoder's torch intra-op threads: the configured count, or (0) the usable cores shared among the
    batcher's threads, at least 1 each."""
    return torch_threads or max(1, len(os.sched_getaffinity(0)) // batcher_threads)


def open_retriever(cfg: Config, progress: bool = False) -> Retriever:
    rc = cfg.retriever
    backend = open_backend(cfg, progress)
    b = rc.batching
    if "torch" in sys.modules:  # a dense back end's encoder (BM25 and web search need no torch)
        sys.modules["torch"].set_num_threads(encoder_threads(b.torch_threads, b.threads))
    batcher = Batcher(backend, b.max_queries, b.max_wait_ms / 1000, b.threads)
    return Retriever(backend, batcher, rc.max_batch, rc.max_top_k, rc.max_query_chars, open_cache(cfg))


def open_cache(cfg: Config) -> QueryCache:
    c = cfg.retriever.cache
    if c.redis_ttl_s and not cfg.addresses.redis_url:
        raise ConfigError(
            "retriever.cache.redis_ttl_s: the shared cache needs addresses.redis_url (or SEARCHRL_REDIS_URL)"
        )
    shared = shared_client(cfg.addresses.redis_url) if c.redis_ttl_s else None
    return QueryCache(c.entries, shared, c.redis_ttl_s)
