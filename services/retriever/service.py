"""The retriever as a domain object: load or build the index for a config, validate and answer searches.

`open_retriever(cfg)` returns a `Retriever` whose `search(queries, top_k)` is what the gRPC servicer and the
in-process tools (eval, naive RAG) call. Validation errors are `InvalidArgument`s naming the request field.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from prometheus_client import Counter, Histogram

from searchrl.config import Config
from searchrl.grpcutil import InvalidArgument
from searchrl.models import resolve_embedder
from searchrl_retriever.corpus import Passage, load_corpus
from searchrl_retriever.index import DenseIndex, Embedder, IndexKey

log = logging.getLogger(__name__)

QUERIES = Counter("searchrl_retriever_queries_total", "Queries answered")
SEARCH_SECONDS = Histogram("searchrl_retriever_search_seconds", "Embed+search time per request", ["stage"])


def index_dir(cfg: Config) -> Path:
    return Path(cfg.retriever.index_dir or Path(cfg.run.run_dir) / "index")


def device_for(cfg: Config) -> str:
    if cfg.retriever.device != "auto":
        return cfg.retriever.device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def make_embedder(cfg: Config) -> Embedder:
    rc = cfg.retriever
    return Embedder(
        resolve_embedder(rc.embedder),
        rc.embedder,
        rc.query_instruction,
        rc.passage_prefix,
        device=device_for(cfg),
        batch_size=rc.embed_batch_size,
    )


def build_index(
    cfg: Config, embedder: Embedder | None = None, force: bool = False, progress: bool = True
) -> tuple[DenseIndex, Embedder]:
    """Load the saved index when its key (embedder, passage prefix, corpus) matches, else embed the corpus and
    save it."""
    embedder = embedder or make_embedder(cfg)
    passages = load_corpus(cfg.retriever.corpus)
    d = index_dir(cfg)
    if not force and DenseIndex.is_current(d, IndexKey.of(embedder, passages)):
        log.info("loading index from %s", d)
        return DenseIndex.load(d), embedder
    t0 = time.perf_counter()
    index = DenseIndex.build(passages, embedder, progress=progress)
    index.save(d)
    log.info("indexed %d passages in %.1fs -> %s", len(passages), time.perf_counter() - t0, d)
    return index, embedder


class Retriever:
    """Validated batched search. Thread-safe (FAISS search and the encoder are guarded by one lock)."""

    def __init__(
        self, index: DenseIndex, embedder: Embedder, max_batch: int, max_top_k: int, max_query_chars: int
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_top_k = max_top_k
        self.max_query_chars = max_query_chars
        self._lock = threading.Lock()

    def validate(self, queries: list[str], top_k: int) -> None:
        if not queries:
            raise InvalidArgument("queries", "must hold at least one query")
        if len(queries) > self.max_batch:
            raise InvalidArgument("queries", f"{len(queries)} queries exceed the limit of {self.max_batch}")
        for i, q in enumerate(queries):
            if not q.strip():
                raise InvalidArgument(f"queries[{i}]", "is empty")
            if len(q) > self.max_query_chars:
                raise InvalidArgument(f"queries[{i}]", f"has {len(q)} chars, limit {self.max_query_chars}")
        if not 1 <= top_k <= self.max_top_k:
            raise InvalidArgument("top_k", f"must be in [1, {self.max_top_k}], got {top_k}")

    def search(self, queries: list[str], top_k: int) -> list[list[tuple[Passage, float]]]:
        self.validate(queries, top_k)
        with self._lock:
            t0 = time.perf_counter()
            vecs = self.embedder.encode_queries(queries)
            t1 = time.perf_counter()
            hits = self.index.search(vecs, top_k)
            t2 = time.perf_counter()
        SEARCH_SECONDS.labels("embed").observe(t1 - t0)
        SEARCH_SECONDS.labels("faiss").observe(t2 - t1)
        QUERIES.inc(len(queries))
        return hits


def open_retriever(cfg: Config, progress: bool = False) -> Retriever:
    index, embedder = build_index(cfg, progress=progress)
    index.to_device(cfg.retriever.device)
    rc = cfg.retriever
    return Retriever(index, embedder, rc.max_batch, rc.max_top_k, rc.max_query_chars)
