"""Search back ends: what answers a batch of queries, behind one method, and how config picks one.

Contract:
- A `Backend` answers `search_batch(queries, k)` with one list of `Hit`s per query, best first, at most k each,
  for the whole batch at once (dense: one encode and one index search). Queries arrive validated by the service
  (non-empty, within its limits); a back end does no request validation. Concurrent calls are safe.
- The answer is a `Results` list; a back end that gathers from others (the shard router) lists the parts that
  did not answer in `Results.shard_errors` (empty = complete).
- `info()` gives the facts of the Info RPC; `fingerprint` names what answers (mode, index key, search-time
  parameters) so a cache keyed by it never serves another index's answers.
- `open_backend(cfg)` loads (or builds, when stale) what `retriever.mode` asks for: dense, bm25, hybrid,
  router or web. `build_backend_index(cfg)` is the `searchrl retriever build-index` side of it.
This module does no request validation, batching or serving; those live in service.py / server.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from searchrl.config import Config
from searchrl.models import resolve_embedder
from searchrl_retriever.corpus import Passage, load_corpus
from searchrl_retriever.index import DenseIndex, Embedder, IndexKey

log = logging.getLogger(__name__)


class Hit(NamedTuple):
    passage: Passage
    score: float


@dataclass(frozen=True)
class ShardError:
    """A shard whose hits are missing from a `Results`: its index, the address tried last, the gRPC status code
    name (DEADLINE_EXCEEDED, UNAVAILABLE, ...) and the message."""

    shard: int
    address: str
    code: str
    message: str


class Results(list):
    """Per-query hit lists (`list[list[Hit]]`), plus the shards that did not answer (router only)."""

    def __init__(self, rows: list[list[Hit]], shard_errors: tuple[ShardError, ...] = ()) -> None:
        super().__init__(rows)
        self.shard_errors = shard_errors

    @property
    def partial(self) -> bool:
        return bool(self.shard_errors)


@dataclass(frozen=True)
class BackendInfo:
    num_passages: int
    dim: int
    embedder: str
    device: str


class Backend(Protocol):
    fingerprint: str

    def search_batch(self, queries: list[str], k: int) -> Results: ...

    def info(self) -> BackendInfo: ...


@dataclass
class DenseBackend:
    """Embed the batch, search the FAISS index (any tier) once."""

    index: DenseIndex
    embedder: Embedder
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = f"dense:{self.index.fingerprint}"

    def search_batch(self, queries: list[str], k: int) -> Results:
        vecs = self.embedder.encode_queries(queries)
        return Results([[Hit(p, s) for p, s in row] for row in self.index.search(vecs, k)])

    def info(self) -> BackendInfo:
        return BackendInfo(
            len(self.index.passages), self.index.index.d, self.index.embedder_name, self.index.device
        )


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


def build_dense(
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


def open_backend(cfg: Config, progress: bool = False) -> Backend:
    """The back end `retriever.mode` names, its index loaded or built, on the configured device."""
    index, embedder = build_dense(cfg, progress=progress)
    index.to_device(cfg.retriever.device)
    return DenseBackend(index, embedder)
