"""BM25 over the same corpus formats as the dense index (bm25s; Search-R1 ships a BM25 retriever too).

Contract:
- `Bm25Index.build(passages, bc)` tokenises title + text (lowercase, bm25s's word pattern, `bc.stopwords`)
  and indexes them with `bc`'s k1 / b / method. `search(queries, k)` returns per query at most k `Hit`s with a
  positive score, best first (a passage sharing no term with the query is no hit).
- `save(dir)` writes bm25s's files and a meta.json holding its `Bm25Key` (the corpus fingerprint and every
  BM25 parameter) atomically, like the dense index; `load(dir, passages)` refuses passages that are not the
  ones it was built from. `build_bm25(cfg)` reuses a current index in `<index_dir>/bm25` or rebuilds it.
- Scores are not comparable across shards (each shard has its own document frequencies); a router merging BM25
  shards by score is approximate.
This module does no networking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import bm25s
import numpy as np

from searchrl.config import Bm25Config, Config
from searchrl_retriever.backend import BackendInfo, Hit, Results, index_dir, load_passages
from searchrl_retriever.corpus import Passage
from searchrl_retriever.index import META_FILE, corpus_fingerprint, save_atomically
from searchrl_retriever.metrics import STAGE_SECONDS

log = logging.getLogger(__name__)

SUBDIR = "bm25"


@dataclass(frozen=True)
class Bm25Key:
    """What a saved BM25 index depends on; meta.json records it."""

    fingerprint: str
    params: str  # Bm25Config as canonical JSON

    @staticmethod
    def of(passages: list[Passage], bc: Bm25Config) -> Bm25Key:
        return Bm25Key(corpus_fingerprint(passages), json.dumps(bc.model_dump(), sort_keys=True))


class Bm25Index:
    def __init__(self, model: bm25s.BM25, passages: list[Passage], key: Bm25Key, bc: Bm25Config) -> None:
        self.model = model
        self.passages = passages
        self.key = key
        self.stopwords = bc.stopwords or None

    @staticmethod
    def build(passages: list[Passage], bc: Bm25Config) -> Bm25Index:
        tokens = _tokenize([p.embed_text() for p in passages], bc.stopwords or None)
        model = bm25s.BM25(k1=bc.k1, b=bc.b, method=bc.method)
        model.index(tokens, show_progress=False)
        return Bm25Index(model, passages, Bm25Key.of(passages, bc), bc)

    def save(self, directory: str | Path) -> None:
        save_atomically(
            directory,
            lambda tmp: self.model.save(str(tmp), show_progress=False),
            {**asdict(self.key), "num_passages": len(self.passages)},
        )

    @staticmethod
    def is_current(directory: str | Path, key: Bm25Key) -> bool:
        path = Path(directory) / META_FILE
        meta = json.loads(path.read_text()) if path.is_file() else {}
        return meta.get("fingerprint") == key.fingerprint and meta.get("params") == key.params

    @staticmethod
    def load(directory: str | Path, passages: list[Passage], bc: Bm25Config) -> Bm25Index:
        """Load a saved index of exactly these passages (ValueError otherwise)."""
        key = Bm25Key.of(passages, bc)
        if not Bm25Index.is_current(directory, key):
            raise ValueError(
                f"{directory}: the BM25 index is not of this corpus and retriever.bm25 (rebuild)"
            )
        model = bm25s.BM25.load(str(directory), show_progress=False)
        return Bm25Index(model, passages, key, bc)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = min(k, len(self.passages))
        ids, scores = self.model.retrieve(_tokenize(queries, self.stopwords), k=k, show_progress=False)
        return [
            [Hit(self.passages[i], float(s)) for i, s in zip(row_ids, row_scores, strict=True) if s > 0]
            for row_ids, row_scores in zip(np.asarray(ids), np.asarray(scores), strict=True)
        ]


def _tokenize(texts: list[str], stopwords: str | None) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)


def build_bm25(cfg: Config, force: bool = False) -> Bm25Index:
    """Load `<index_dir>/bm25` when current for this replica's passages and retriever.bm25, else build, save."""
    passages, bc = load_passages(cfg), cfg.retriever.bm25
    d = index_dir(cfg) / SUBDIR
    if not force and Bm25Index.is_current(d, Bm25Key.of(passages, bc)):
        return Bm25Index.load(d, passages, bc)
    t0 = time.perf_counter()
    index = Bm25Index.build(passages, bc)
    index.save(d)
    log.info("BM25-indexed %d passages in %.1fs -> %s", len(passages), time.perf_counter() - t0, d)
    return index


class Bm25Backend:
    """The `Backend` of mode bm25: tokenise the batch and score it against the inverted index in one call."""

    mode = "bm25"

    def __init__(self, index: Bm25Index, shard: str = "") -> None:
        self.index = index
        self.shard = shard
        self.fingerprint = hashlib.sha256(
            f"bm25\0{index.key.fingerprint}\0{index.key.params}".encode()
        ).hexdigest()[:16]

    def info(self) -> BackendInfo:
        return BackendInfo(len(self.index.passages), 0, "bm25", "cpu")

    def search_batch(self, queries: list[str], k: int) -> Results:
        t0 = time.perf_counter()
        rows = self.index.search(queries, k)
        STAGE_SECONDS.labels("bm25", self.shard).observe(time.perf_counter() - t0)
        return Results(rows)
