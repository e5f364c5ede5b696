"""Dense index: sentence-transformers embeddings in a FAISS inner-product index (R1-Searcher: Flat IP).

Contract:
- `Embedder.encode(texts)` returns L2-normalised float32 [N, D] (inner product = cosine).
- `DenseIndex.build(passages, embedder)` embeds the corpus with a progress bar; `save(dir)` / `load(dir)` persist
  the FAISS index, the passages and a meta.json recording its `IndexKey`: the embedder, the passage prefix and
  a fingerprint of the passages (ids, titles, texts, order), the FAISS tier and its build parameters
  (tiers.py), i.e. everything the stored index depends on. `is_current(dir, key)` is True only when the saved
  index has exactly that key; a meta.json from before tiers existed describes a flat index. The query instruction is not
  part of it: it is applied to queries at search time and never changes the stored vectors.
- `save` is atomic: the files are written and fsynced in a temp dir inside `dir`, the old meta.json is removed,
  the data files are renamed into place and meta.json comes last. A crash at any point leaves either the old
  index with its meta or no meta (not current: rebuilt), never a meta next to files it does not describe.
- `DenseIndex.search(query_vectors, k)` returns per query a list of (passage, score), best first.
- GPU placement (faiss-gpu, `index_cpu_to_all_gpus`, fp16, sharded over the GPUs) happens when FAISS sees GPUs,
  device is auto/cuda and the tier has a GPU form (tiers.GPU_TIERS).
This module does no networking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from searchrl.config import IndexConfig
from searchrl_retriever.corpus import Passage
from searchrl_retriever.tiers import GPU_TIERS, build_params, make_index, search_params, set_search_params

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.jsonl"
META_FILE = "meta.json"


class Embedder:
    """sentence-transformers encoder with an optional query instruction / passage prefix (bge, e5). With `trace`
    on CPU its transformer runs as a checked TorchScript trace (traced.py); `traced` says whether it does."""

    def __init__(
        self,
        path: str,
        name: str,
        query_instruction: str = "",
        passage_prefix: str = "",
        device: str = "cpu",
        batch_size: int = 64,
        trace: bool = False,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(path, device=device)
        self.query_instruction = query_instruction
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())
        self.traced = False
        if trace and device == "cpu":
            from searchrl_retriever.traced import trace_transformer

            # different lengths, one past the model's maximum (truncated to it), with the prefixes in use
            long = "retrieval " * (4 * (self.model.max_seq_length or 512))
            probes = [
                query_instruction + "who wrote it",
                passage_prefix + long,
                query_instruction + "when " * 20,
            ]
            reason = trace_transformer(self.model, probes)
            self.traced = reason is None
            if reason:
                log.warning("retriever.trace_encoder: %s keeps the eager model: %s", name, reason)

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
    """Hash of the passages' ids, titles and texts in order (the title is embedded with the text)."""
    h = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.title, p.text):
            h.update(part.encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class IndexKey:
    """What the stored vectors depend on; meta.json records it and an index with another key is stale."""

    embedder: str  # retriever.embedder as configured (builtin name or folder)
    passage_prefix: str
    fingerprint: str  # corpus_fingerprint of the passages
    index_type: str = "flat"  # retriever.index.type
    index_params: str = ""  # tiers.build_params

    @staticmethod
    def of(embedder: Embedder, passages: list[Passage], ic: IndexConfig | None = None) -> IndexKey:
        fp = corpus_fingerprint(passages)
        return IndexKey.of_parts(embedder.name, embedder.passage_prefix, fp, ic or IndexConfig())

    @staticmethod
    def of_parts(embedder: str, passage_prefix: str, fingerprint: str, ic: IndexConfig) -> IndexKey:
        return IndexKey(embedder, passage_prefix, fingerprint, ic.type, build_params(ic))

    def matches(self, meta: dict[str, object]) -> bool:
        # Fields with a default may be missing from an older meta.json: that index was built with the default.
        return all(meta.get(f.name, f.default) == getattr(self, f.name) for f in fields(self))

    def digest(self) -> str:
        """A short hash of the whole key (for cache keys and logs)."""
        return hashlib.sha256(json.dumps(vars(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DenseIndex:
    index: faiss.Index
    passages: list[Passage]
    key: IndexKey
    device: str = "cpu"
    search_params: str = ""  # tiers.search_params in force (they change answers, not the stored index)

    @property
    def embedder_name(self) -> str:
        return self.key.embedder

    @property
    def fingerprint(self) -> str:
        """Changes whenever the same query vector could get other hits (key or search parameters)."""
        return hashlib.sha256(f"{self.key.digest()}\0{self.search_params}".encode()).hexdigest()[:16]

    @staticmethod
    def build(
        passages: list[Passage],
        embedder: Embedder,
        progress: bool = True,
        ic: IndexConfig | None = None,
    ) -> DenseIndex:
        ic = ic or IndexConfig()
        vecs = embedder.encode_passages(passages, progress=progress)
        index = make_index(vecs, ic)
        return DenseIndex(index, passages, IndexKey.of(embedder, passages, ic))

    def configure(self, ic: IndexConfig) -> DenseIndex:
        """Apply the search-time parameters of `ic` (nprobe, efSearch) to this CPU index."""
        set_search_params(self.index, ic)
        self.search_params = search_params(ic)
        return self

    def save(self, directory: str | Path) -> None:
        """Write the index into `directory` atomically (see the module docstring)."""

        def write(tmp: Path) -> None:
            cpu_index = faiss.index_gpu_to_cpu(self.index) if self.device == "cuda" else self.index
            faiss.write_index(cpu_index, str(tmp / INDEX_FILE))
            with (tmp / PASSAGES_FILE).open("w") as f:
                for p in self.passages:
                    f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")

        save_atomically(
            directory, write, {**vars(self.key), "num_passages": len(self.passages), "dim": self.index.d}
        )

    @staticmethod
    def load(directory: str | Path) -> DenseIndex:
        """Load a saved index; ValueError when its files do not match each other or the meta."""
        from searchrl_retriever.corpus import load_corpus

        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        index = faiss.read_index(str(d / INDEX_FILE))
        passages = load_corpus(d / PASSAGES_FILE)
        if index.ntotal != len(passages):
            raise ValueError(f"{d}: index has {index.ntotal} vectors but {len(passages)} passages")
        key = IndexKey(**{f.name: meta[f.name] for f in fields(IndexKey) if f.name in meta})
        if corpus_fingerprint(passages) != key.fingerprint:
            raise ValueError(f"{d}: {PASSAGES_FILE} does not match {META_FILE} (rebuild with --force)")
        return DenseIndex(index, passages, key)

    @staticmethod
    def is_current(directory: str | Path, key: IndexKey) -> bool:
        """True when `directory` holds a saved index with exactly this key."""
        meta_path = Path(directory) / META_FILE
        return meta_path.is_file() and key.matches(json.loads(meta_path.read_text()))

    def to_device(self, device: str) -> DenseIndex:
        """Move the index onto all GPUs when asked for (`cuda`) or available (`auto`)."""
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if device == "cuda" and ngpu == 0:
            raise RuntimeError(
                "retriever.device: cuda requested but FAISS sees no GPU (install faiss-gpu-cu12)"
            )
        if ngpu > 0 and device in ("auto", "cuda") and self.key.index_type not in GPU_TIERS:
            log.info("FAISS tier %s has no GPU form; the index stays on the CPU", self.key.index_type)
        elif ngpu > 0 and device in ("auto", "cuda"):
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


def save_atomically(directory: str | Path, write: Callable[[Path], None], meta: dict[str, object]) -> None:
    """`write(tmp)` puts the data files into a temp dir inside `directory`; they are fsynced and renamed into
    place after the old meta.json is removed, and `meta` lands as meta.json last (see the module docstring)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=d))
    try:
        write(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        for name in [*names, META_FILE]:
            _fsync(tmp / name)
        # From the removal of the old meta until the new one lands, the directory holds no current index.
        (d / META_FILE).unlink(missing_ok=True)
        _fsync(d)
        for name in names:
            os.replace(tmp / name, d / name)
        _fsync(d)
        os.replace(tmp / META_FILE, d / META_FILE)
        _fsync(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (renames), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
