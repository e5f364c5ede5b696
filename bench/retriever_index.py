"""Index tiers measured: recall@k against Flat, bytes per vector, queries/s and build time, per FAISS tier.

Two corpora:
- synthetic: N random *clustered* unit vectors (1000 Gaussian clusters, like embeddings of a topical corpus;
  not real text), queries drawn the same way;
- the demo world (searchrl.world, configs/demo-cpu.yaml): its passages embedded with all-MiniLM-L6-v2 and its
  questions as queries.
Bytes per vector = the size of the written index file / N (codes, ids, graph links, centroids: what a replica
holds in memory). Queries/s: one batch of all queries, FAISS on `--threads` threads. From the synthetic bytes
per vector a wiki-18 table (21M passages x 768-d) is computed: the part that scales with the dimension (the
codes) is scaled from 384 to 768, the rest (ids, links, centroids) is kept per vector.

  python bench/retriever_index.py                      # 1M x 384 synthetic + demo world -> bench/results/
  python bench/retriever_index.py --n 100000 --no-demo # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from searchrl.config import IndexConfig, load_config
from searchrl_retriever.tiers import effective_nlist, effective_pq_m, make_index

TIERS = ["flat", "flat-fp16", "sq8", "hnsw", "ivf-flat", "ivf-pq"]
WIKI18 = (21_000_000, 768)


def clustered(n: int, dim: int, seed: int, clusters: int = 1000, chunk: int = 100_000) -> np.ndarray:
    """Unit vectors around `clusters` random centres (centres from seed 0, so queries share them)."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        v = centres[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32)
        out[i : i + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def code_bytes(ic: IndexConfig, dim: int) -> float:
    """Bytes per vector that scale with the dimension (the stored code)."""
    return {"flat": 4 * dim, "flat-fp16": 2 * dim, "sq8": dim, "hnsw": 4 * dim, "ivf-flat": 4 * dim}.get(
        ic.type, effective_pq_m(dim, ic.pq_m) * ic.pq_nbits / 8
    )


def measure(vecs: np.ndarray, queries: np.ndarray, truth: np.ndarray, ic: IndexConfig, k: int) -> dict:
    t0 = time.perf_counter()
    index = make_index(vecs, ic)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        faiss.write_index(index, f"{d}/i")
        size = os.path.getsize(f"{d}/i")
    t0 = time.perf_counter()
    _, got = index.search(queries, k)
    search_s = time.perf_counter() - t0
    recall = float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got, strict=True)]))
    del index
    return {
        "build_s": build_s,
        "bytes_per_vector": size / len(vecs),
        "qps": len(queries) / search_s,
        "recall": recall,
    }


def run(name: str, vecs: np.ndarray, queries: np.ndarray, k: int, tiers: list[str], ic: dict) -> list[dict]:
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    _, truth = exact.search(queries, k)
    del exact
    rows = []
    for tier in tiers:
        cfg = IndexConfig(type=tier, **ic)
        r = {
            "corpus": name,
            "tier": tier,
            "params": params_of(cfg, *vecs.shape),
            **measure(vecs, queries, truth, cfg, k),
        }
        print(
            f"{name} {tier:9s} recall@{k} {r['recall']:.3f}  {r['bytes_per_vector']:8.1f} B/vec  "
            f"{r['qps']:9.0f} q/s  build {r['build_s']:7.1f}s",
            flush=True,
        )
        rows.append(r)
    return rows


def params_of(ic: IndexConfig, n: int, dim: int) -> str:
    if ic.type == "hnsw":
        return f"M={ic.hnsw_m}, efC={ic.hnsw_ef_construction}, efSearch={ic.hnsw_ef_search}"
    if ic.type == "ivf-flat":
        return f"nlist={effective_nlist(n, ic.nlist)}, nprobe={ic.nprobe}"
    if ic.type == "ivf-pq":
        return f"nlist={effective_nlist(n, ic.nlist)}, m={effective_pq_m(dim, ic.pq_m)}x{ic.pq_nbits}b, nprobe={ic.nprobe}"
    return ""


def demo_world(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo world's passage vectors (its saved Flat index, built if needed) and question vectors."""
    from searchrl.demo import demo_config, prepare_world
    from searchrl.jsonl import read_jsonl
    from searchrl_retriever.backend import build_dense

    cfg = load_config("configs/demo-cpu.yaml")
    world = prepare_world(cfg, seed=0, n_test=300)
    cfg = demo_config(cfg, world, Path(tempfile.mkdtemp()), None, None)
    index, embedder = build_dense(cfg, progress=False)
    vecs = index.index.reconstruct_n(0, index.index.ntotal)
    questions = [
        obj["question"]
        for split in ("test", "stage1", "stage2")
        for _, obj in read_jsonl(world[split], split)
    ]
    return vecs, embedder.encode_queries(questions[:n_queries])


def wiki_rows(rows: list[dict], dim: int, ic: dict) -> list[tuple[str, float, float]]:
    """(tier, bytes per vector, GiB) for wiki-18 from the synthetic run's measured bytes per vector."""
    n, wdim = WIKI18
    out = []
    for r in rows:
        cfg = IndexConfig(type=r["tier"], **ic)
        bpv = r["bytes_per_vector"] - code_bytes(cfg, dim) + code_bytes(cfg, wdim)
        out.append((r["tier"], bpv, n * bpv / 2**30))
    return out


def report(rows: list[dict], wiki: list[tuple[str, float, float]], args: argparse.Namespace) -> str:
    lines = [
        "# Retriever index tiers",
        "",
        f"`python bench/retriever_index.py {' '.join(sys.argv[1:])}`: faiss {faiss.__version__}, "
        f"{args.threads} FAISS threads on {os.cpu_count()} cores (a shared 2-core box), k={args.k}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "- *synthetic*: random clustered unit vectors (1000 Gaussian clusters), not text embeddings; queries drawn "
        "the same way. *demo world*: the bundled world's passages and questions embedded with all-MiniLM-L6-v2.",
        "- recall@k: the share of Flat's top k each tier returns. Bytes/vector: index file size / N (what a replica "
        "holds). Queries/s: one batch of all queries. Build: train (on <= 100k sampled vectors) + add.",
        "",
        "| corpus | tier | params | recall@k | bytes/vector | queries/s | build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['corpus']} | {r['tier']} | {r['params']} | {r['recall']:.3f} | {r['bytes_per_vector']:.1f} "
            f"| {r['qps']:.0f} | {r['build_s']:.1f} |"
        )
    n, d = WIKI18
    lines += [
        "",
        f"## wiki-18 ({n // 1_000_000}M passages x {d}-d), computed",
        "",
        "From the synthetic run: bytes/vector minus the code bytes at 384-d plus the code bytes at 768-d (ivf-pq: "
        "m = dim/8 sub-quantizers, so its code doubles too); ids, HNSW links and centroids kept per vector. The "
        "seeds' Flat index is the first row (Search-R1 #54/#57: it runs out of memory).",
        "",
        "| tier | bytes/vector | memory GiB |",
        "|---|---|---|",
        *[f"| {tier} | {bpv:.0f} | {gib:.1f} |" for tier, bpv, gib in wiki],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiers", nargs="+", default=TIERS, choices=TIERS)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0 = 4*sqrt(N))")
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--out", default="bench/results/retriever-index.md")
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)
    ic = {"hnsw_m": args.hnsw_m, "nlist": args.nlist, "train_size": 100_000}
    rows = []
    if not args.no_demo:
        vecs, queries = demo_world(args.queries)
        rows += run("demo world", vecs, queries, args.k, args.tiers, ic)
    synthetic = clustered(args.n, args.dim, seed=1)
    synthetic_rows = run(
        f"synthetic {args.n:,}", synthetic, clustered(args.queries, args.dim, seed=2), args.k, args.tiers, ic
    )
    rows += synthetic_rows
    text = report(rows, wiki_rows(synthetic_rows, args.dim, ic), args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
