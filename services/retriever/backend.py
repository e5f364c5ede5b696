"""Search back ends: what answers a batch of queries, behind one method, and how config picks one.

Contract:
- A `Backend` answers `search_batch(queries, k)` with one list of `Hit`s per query, best first, at most k each,
  for the whole batch at once (dense: one encode and one index search). Queries arrive validated by the service
  (non-empty, within its limits); a back end does no request validation. Concurrent calls are safe.
- The answer is a `Results` list; a back end that gathers from others (the shard router) lists the parts that
  did not answer in `Results.shard_errors` (empty = complete).
- `info()` gives the facts of the Info RPC; `fingerprint` names what answers (mode, index key, search-time
  parameters) so a cache keyed by it never serves another index's answers.
- `open_backend(cfg)` loads (or builds, when stale) what `retriever.mode` asks for: dense (the FAISS tier of
  `retriever.index`), bm25, hybrid (both, fused by RRF), router (scatter-gather over shard servers) or web.
  `build_indexes(cfg, force)` is `searchrl retriever build-index`: it builds what the mode reads.
- A replica with `retriever.shard.count` > 1 indexes and serves only its slice (`shard_slice`) of the corpus,
  in its own directory `<index_dir>/shard-<i>-of-<N>`; an index is reused only when its key matches the config
  (`dense_key`, `bm25.Bm25Key`), otherwise rebuilt.
This module does no request validation, batching or serving; those live in service.py / server.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from searchrl.config import Config, ShardConfig
from searchrl.models import resolve_embedder
from searchrl_retriever.corpus import Passage, load_corpus
from searchrl_retriever.index import DenseIndex, Embedder, IndexKey, corpus_fingerprint
from searchrl_retriever.metrics import STAGE_SECONDS

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
    mode: str  # dense, bm25, hybrid, router, web
    fingerprint: str

    def search_batch(self, queries: list[str], k: int) -> Results: ...

    def info(self) -> BackendInfo: ...


class DenseBackend:
    """Embed the batch and search the FAISS index (any tier) once. FAISS and torch release the GIL, so
    concurrent calls overlap; no lock is needed."""

    mode = "dense"

    def __init__(self, index: DenseIndex, embedder: Embedder, shard: str = "") -> None:
        self.index = index
        self.embedder = embedder
        self.shard = shard
        instruction = hashlib.sha256(embedder.query_instruction.encode()).hexdigest()[:8]
        self.fingerprint = f"dense:{index.fingerprint}:{instruction}"

    def search_batch(self, queries: list[str], k: int) -> Results:
        t0 = time.perf_counter()
        vecs = self.embedder.encode_queries(queries)
        t1 = time.perf_counter()
        rows = self.index.search(vecs, k)
        STAGE_SECONDS.labels("encode", self.shard).observe(t1 - t0)
        STAGE_SECONDS.labels("search", self.shard).observe(time.perf_counter() - t1)
        return Results([[Hit(p, s) for p, s in row] for row in rows])

    def info(self) -> BackendInfo:
        idx = self.index
        return BackendInfo(len(idx.passages), idx.index.d, idx.embedder_name, idx.device)


def shard_slice(passages: list[Passage], shard: ShardConfig) -> list[Passage]:
    """Shard `index` of `count`: the contiguous `index`-th of `count` near-equal slices, in corpus order."""
    n = len(passages)
    return passages[n * shard.index // shard.count : n * (shard.index + 1) // shard.count]


def shard_label(cfg: Config) -> str:
    """'' unsharded, else 'i/N' (the metrics' shard label)."""
    s = cfg.retriever.shard
    return f"{s.index}/{s.count}" if s.count > 1 else ""


def index_dir(cfg: Config) -> Path:
    """Where this replica's index lives: retriever.index_dir ('' = <run_dir>/index), per shard a subfolder."""
    base = Path(cfg.retriever.index_dir or Path(cfg.run.run_dir) / "index")
    s = cfg.retriever.shard
    return base / f"shard-{s.index}-of-{s.count}" if s.count > 1 else base


def load_passages(cfg: Config) -> list[Passage]:
    passages = shard_slice(load_corpus(cfg.retriever.corpus), cfg.retriever.shard)
    if not passages:
        raise ValueError(f"retriever.shard: shard {shard_label(cfg)} of {cfg.retriever.corpus} is empty")
    return passages


def dense_key(cfg: Config, passages: list[Passage]) -> IndexKey:
    """The key a current dense index must have, computed from config alone (no embedder is loaded)."""
    rc = cfg.retriever
    return IndexKey.of_parts(rc.embedder, rc.passage_prefix, corpus_fingerprint(passages), rc.index)


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
        trace=rc.trace_encoder,
    )


def build_dense(
    cfg: Config, embedder: Embedder | None = None, force: bool = False, progress: bool = True
) -> tuple[DenseIndex, Embedder]:
    """Load the saved dense index when its key matches, else embed the passages, build the tier and save it.
    The index comes back with the configured search-time parameters applied."""
    embedder = embedder or make_embedder(cfg)
    passages = load_passages(cfg)
    d = index_dir(cfg)
    ic = cfg.retriever.index
    if not force and DenseIndex.is_current(d, IndexKey.of(embedder, passages, ic)):
        log.info("loading index from %s", d)
        return DenseIndex.load(d).configure(ic), embedder
    t0 = time.perf_counter()
    index = DenseIndex.build(passages, embedder, progress=progress, ic=ic)
    index.save(d)
    log.info("indexed %d passages (%s) in %.1fs -> %s", len(passages), ic.type, time.perf_counter() - t0, d)
    return index.configure(ic), embedder


def build_indexes(cfg: Config, force: bool = False, progress: bool = True) -> str:
    """Build (or check) every index the configured mode reads; returns a one-line summary."""
    from searchrl_retriever.bm25 import build_bm25

    mode = cfg.retriever.mode
    if mode in ("router", "web"):
        return f"retriever.mode {mode} reads no local index: nothing to build"
    done = []
    if mode in ("dense", "hybrid"):
        index, _ = build_dense(cfg, force=force, progress=progress)
        done.append(f"dense {cfg.retriever.index.type}: {len(index.passages)} passages (dim {index.index.d})")
    if mode in ("bm25", "hybrid"):
        bm25 = build_bm25(cfg, force=force)
        done.append(f"bm25: {len(bm25.passages)} passages")
    where = f" (shard {shard_label(cfg)})" if shard_label(cfg) else ""
    return f"indexed{where} " + "; ".join(done) + f" in {index_dir(cfg)}"


def open_backend(cfg: Config, progress: bool = False) -> Backend:
    """The back end `retriever.mode` names, its index loaded or built, on the configured device."""
    rc = cfg.retriever
    if rc.mode == "router":
        from searchrl_retriever.router import Router

        return Router.from_config(cfg)
    if rc.mode == "web":
        from searchrl_retriever.web import WebBackend

        return WebBackend.from_config(rc.web)
    if rc.mode == "bm25":
        from searchrl_retriever.bm25 import Bm25Backend, build_bm25

        return Bm25Backend(build_bm25(cfg), shard_label(cfg))
    index, embedder = build_dense(cfg, progress=progress)
    index.to_device(rc.device)
    dense = DenseBackend(index, embedder, shard_label(cfg))
    if rc.mode == "dense":
        return dense
    from searchrl_retriever.bm25 import Bm25Backend, build_bm25
    from searchrl_retriever.hybrid import HybridBackend

    return HybridBackend(dense, Bm25Backend(build_bm25(cfg), shard_label(cfg)), rc.hybrid)
