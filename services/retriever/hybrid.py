"""Hybrid search: dense and BM25 rankings fused by reciprocal-rank fusion (RRF, Cormack et al. 2009).

Contract: `rrf_fuse(rankings, k, rrf_k)` scores each passage (by id) with the sum over the rankings that hold it
of 1 / (rrf_k + rank), rank counted from 1, and returns the k best, ties broken by first appearance (dense
before BM25). `HybridBackend` asks each side for `max(k, depth)` candidates of the whole batch, then fuses per
query; the hit score is the RRF score. Scores of the two sides are never compared, only ranks.
"""

from __future__ import annotations

from searchrl.config import HybridConfig
from searchrl_retriever.backend import Backend, BackendInfo, Hit, Results


def rrf_fuse(rankings: list[list[Hit]], k: int, rrf_k: int) -> list[Hit]:
    """One query's rankings (best first) fused into its top k by RRF."""
    fused: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            prior = fused.get(hit.passage.id)
            gain = 1.0 / (rrf_k + rank)
            fused[hit.passage.id] = Hit(hit.passage, gain + (prior.score if prior else 0.0))
    # sorted() is stable, so equal scores keep the order of first appearance.
    return sorted(fused.values(), key=lambda h: -h.score)[:k]


class HybridBackend:
    mode = "hybrid"

    def __init__(self, dense: Backend, lexical: Backend, hc: HybridConfig) -> None:
        self.dense = dense
        self.lexical = lexical
        self.depth = hc.depth
        self.rrf_k = hc.rrf_k
        self.fingerprint = f"hybrid:{dense.fingerprint}:{lexical.fingerprint}:{hc.rrf_k}:{hc.depth}"

    def info(self) -> BackendInfo:
        return self.dense.info()

    def search_batch(self, queries: list[str], k: int) -> Results:
        depth = max(k, self.depth)
        dense = self.dense.search_batch(queries, depth)
        lexical = self.lexical.search_batch(queries, depth)
        return Results([rrf_fuse([d, b], k, self.rrf_k) for d, b in zip(dense, lexical, strict=True)])
