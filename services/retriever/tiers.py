"""FAISS index tiers: make one from vectors as `retriever.index` says, set its search-time parameters.

Contract:
- `make_index(vecs, ic)` returns a trained, filled inner-product index of tier `ic.type` (L2-normalised vectors,
  so inner product = cosine, as R1-Searcher's Flat IP). IVF tiers train on at most `ic.train_size` vectors
  sampled with a fixed seed, so the same corpus and config give the same index.
- `build_params(ic)` is what the stored index depends on beyond the vectors (part of `IndexKey`);
  `search_params(ic)` what only changes answers (applied by `set_search_params` after loading).
- `GPU_TIERS` can be cloned onto GPUs by `faiss.index_cpu_to_all_gpus`; HNSW and the scalar-quantised flat
  tiers stay on the CPU.
This module knows nothing of passages, files or config loading.
"""

from __future__ import annotations

import json
import math

import faiss
import numpy as np

from searchrl.config import IndexConfig

GPU_TIERS = frozenset({"flat", "ivf-flat", "ivf-pq"})
# FAISS warns below 39 training points per centroid; auto nlist keeps to that.
_MIN_POINTS_PER_LIST = 39
_SQ = {"flat-fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


def build_params(ic: IndexConfig) -> str:
    """The build parameters of the tier as canonical JSON ('' for the parameterless flat tiers)."""
    names = {
        "hnsw": ("hnsw_m", "hnsw_ef_construction"),
        "ivf-flat": ("nlist", "train_size"),
        "ivf-pq": ("nlist", "pq_m", "pq_nbits", "train_size"),
    }.get(ic.type, ())
    return json.dumps({n: getattr(ic, n) for n in names}, sort_keys=True) if names else ""


def search_params(ic: IndexConfig) -> str:
    names = {"hnsw": ("hnsw_ef_search",), "ivf-flat": ("nprobe",), "ivf-pq": ("nprobe",)}.get(ic.type, ())
    return json.dumps({n: getattr(ic, n) for n in names}, sort_keys=True) if names else ""


def effective_nlist(n: int, nlist: int) -> int:
    """`nlist`, or for 0 about 4*sqrt(n); never more lists than n / 39 training points allow (at least 1)."""
    want = nlist or int(4 * math.sqrt(n))
    return max(1, min(want, n // _MIN_POINTS_PER_LIST))


def effective_pq_m(dim: int, pq_m: int) -> int:
    m = pq_m or max(1, dim // 8)
    if dim % m:
        raise ValueError(f"retriever.index.pq_m: {m} does not divide the embedding dimension {dim}")
    return m


def make_index(vecs: np.ndarray, ic: IndexConfig) -> faiss.Index:
    n, dim = vecs.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if ic.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif ic.type in _SQ:
        index = faiss.IndexScalarQuantizer(dim, _SQ[ic.type], ip)
    elif ic.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, ic.hnsw_m, ip)
        index.hnsw.efConstruction = ic.hnsw_ef_construction
    elif ic.type in ("ivf-flat", "ivf-pq"):
        if n == 0:
            raise ValueError(f"retriever.index.type: {ic.type} needs vectors to train on")
        nlist = effective_nlist(n, ic.nlist)
        quantizer = faiss.IndexFlatIP(dim)
        if ic.type == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, effective_pq_m(dim, ic.pq_m), ic.pq_nbits, ip)
    else:  # the config's Literal makes this unreachable
        raise ValueError(f"retriever.index.type: unknown tier {ic.type!r}")
    if not index.is_trained:
        index.train(_sample(vecs, ic.train_size))
    index.add(vecs)
    set_search_params(index, ic)
    return index


def set_search_params(index: faiss.Index, ic: IndexConfig) -> None:
    """Apply nprobe / efSearch to a CPU index of tier `ic.type` (before any GPU cloning, which copies them)."""
    if ic.type == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = ic.hnsw_ef_search
    elif ic.type in ("ivf-flat", "ivf-pq"):
        faiss.extract_index_ivf(index).nprobe = ic.nprobe


def _sample(vecs: np.ndarray, size: int) -> np.ndarray:
    if len(vecs) <= size:
        return vecs
    rows = np.random.default_rng(0).choice(len(vecs), size, replace=False)
    return np.ascontiguousarray(vecs[np.sort(rows)])
