"""Dense index: sentence-transformers embeddings in a FAISS inner-product index (R1-Searcher: Flat IP).

Contract:
- `Embedder.encode(texts)` returns L2-normalised float32 [N, D] (inner product = cosine).
- `DenseIndex.build(passages, embedder)` embeds the corpus with a progress bar; `save(dir)` / `load(dir)` persist
  the FAISS index, the passages and a meta.json naming the embedder and corpus, so a stale index is detected.
- `DenseIndex.search(query_vectors, k)` returns per query a list of (passage, score), best first.
- GPU placement (faiss-gpu, `index_cpu_to_all_gpus`) happens when FAISS sees GPUs and device is auto/cuda.
This module does no networking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from searchrl_retriever.corpus import Passage

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.jsonl"
META_FILE = "meta.json"


class Embedder:
    """sentence-transformers encoder with an optional query instruction / passage prefix (bge, e5)."""

    def __init__(
        self,
        path: str,
        name: str,
        query_instruction: str = "",
        passage_prefix: str = "",
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(path, device=device)
        self.query_instruction = query_instruction
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.encode([self.query_instruction + q for q in queries])

    def encode_passages(self, passages: list[Passage], progress: bool = True) -> np.ndarray:
        texts = [self.passage_prefix + p.embed_text() for p in passages]
        chunks = []
        step = max(self.batch_size * 8, 1)
        for i in tqdm(
            range(0, len(texts), step), desc="embedding passages", unit="chunk", disable=not progress
        ):
            chunks.append(self.encode(texts[i : i + step]))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)


def corpus_fingerprint(passages: list[Passage]) -> str:
    h = hashlib.sha256()
    for p in passages:
        h.update(p.id.encode())
        h.update(b"\0")
        h.update(p.text.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class DenseIndex:
    index: faiss.Index
    passages: list[Passage]
    embedder_name: str
    fingerprint: str
    device: str = "cpu"

    @staticmethod
    def build(passages: list[Passage], embedder: Embedder, progress: bool = True) -> DenseIndex:
        vecs = embedder.encode_passages(passages, progress=progress)
        index = faiss.IndexFlatIP(embedder.dim)
        index.add(vecs)
        return DenseIndex(index, passages, embedder.name, corpus_fingerprint(passages))

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(
            faiss.index_gpu_to_cpu(self.index) if self.device == "cuda" else self.index, str(d / INDEX_FILE)
        )
        with (d / PASSAGES_FILE).open("w") as f:
            for p in self.passages:
                f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")
        meta = {
            "embedder": self.embedder_name,
            "fingerprint": self.fingerprint,
            "num_passages": len(self.passages),
            "dim": self.index.d,
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=1))

    @staticmethod
    def load(directory: str | Path) -> DenseIndex:
        from searchrl_retriever.corpus import load_corpus

        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        index = faiss.read_index(str(d / INDEX_FILE))
        passages = load_corpus(d / PASSAGES_FILE)
        if index.ntotal != len(passages):
            raise ValueError(f"{d}: index has {index.ntotal} vectors but {len(passages)} passages")
        return DenseIndex(index, passages, meta["embedder"], meta["fingerprint"])

    @staticmethod
    def is_current(directory: str | Path, embedder_name: str, passages: list[Passage]) -> bool:
        """True when `directory` holds an index of exactly these passages made with this embedder."""
        meta_path = Path(directory) / META_FILE
        if not meta_path.is_file():
            return False
        meta = json.loads(meta_path.read_text())
        return meta.get("embedder") == embedder_name and meta.get("fingerprint") == corpus_fingerprint(
            passages
        )

    def to_device(self, device: str) -> DenseIndex:
        """Move the index onto all GPUs when asked for (`cuda`) or available (`auto`)."""
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if device == "cuda" and ngpu == 0:
            raise RuntimeError(
                "retriever.device: cuda requested but FAISS sees no GPU (install faiss-gpu-cu12)"
            )
        if ngpu > 0 and device in ("auto", "cuda"):
            co = faiss.GpuMultipleClonerOptions()
            co.useFloat16 = True
            co.shard = True
            self.index = faiss.index_cpu_to_all_gpus(self.index, co=co)
            self.device = "cuda"
            log.info("FAISS index on %d GPU(s), fp16, sharded", ngpu)
        return self

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[Passage, float]]]:
        k = min(k, len(self.passages))
        scores, ids = self.index.search(query_vectors, k)
        return [
            [(self.passages[i], float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]
