"""BM25 (bm25s) and hybrid RRF search (issue 9): lexical hits over both corpus formats, the BM25 index saved,
reused only while its key holds, and dense + BM25 fused by reciprocal rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchrl.config import Bm25Config
from searchrl_retriever.backend import Hit, build_indexes, index_dir, open_backend
from searchrl_retriever.bm25 import SUBDIR, Bm25Index, Bm25Key
from searchrl_retriever.corpus import Passage, load_corpus
from searchrl_retriever.hybrid import rrf_fuse

ROOT = Path(__file__).resolve().parents[2]
TINY = load_corpus(ROOT / "data" / "tiny" / "corpus.jsonl")


def _ids(rows: list[list[Hit]]) -> list[list[str]]:
    return [[h.passage.id for h in row] for row in rows]


def test_bm25_ranks_by_shared_terms_and_drops_passages_sharing_none() -> None:
    index = Bm25Index.build(TINY, Bm25Config())
    rows = index.search(["who founded Korrin Works", "the of a", "zzzz"], 3)
    assert rows[0][0].passage.id in {"p1", "o1"} and {h.passage.id for h in rows[0][:2]} == {"p1", "o1"}
    assert all(a.score >= b.score > 0 for a, b in zip(rows[0], rows[0][1:], strict=False))
    assert rows[1:] == [[], []], "stopwords only / unknown words match nothing"


def test_search_r1_contents_format_gives_the_same_hits(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "".join(json.dumps({"id": p.id, "contents": f'"{p.title}"\n{p.text}'}) + "\n" for p in TINY)
    )
    converted = load_corpus(path)
    queries = ["inventor born in Tirabel", "Blue Heron Guild"]
    assert _ids(Bm25Index.build(converted, Bm25Config()).search(queries, 4)) == _ids(
        Bm25Index.build(TINY, Bm25Config()).search(queries, 4)
    )


def test_save_load_and_the_key(tmp_path: Path) -> None:
    bc = Bm25Config(k1=1.2)
    built = Bm25Index.build(TINY, bc)
    built.save(tmp_path)
    assert Bm25Index.is_current(tmp_path, Bm25Key.of(TINY, bc))
    assert not Bm25Index.is_current(tmp_path, Bm25Key.of(TINY, Bm25Config()))
    assert not Bm25Index.is_current(tmp_path, Bm25Key.of(TINY[1:], bc))
    loaded = Bm25Index.load(tmp_path, TINY, bc)
    queries = ["Saldane Press founder", "born in 1902"]
    assert loaded.search(queries, 5) == built.search(queries, 5)
    with pytest.raises(ValueError, match="not of this corpus and retriever.bm25"):
        Bm25Index.load(tmp_path, [*TINY, Passage("x", "", "new")], bc)


def test_rrf_fuse_sums_reciprocal_ranks() -> None:
    a, b, c, d = (Passage(i, "", i) for i in "abcd")
    dense = [Hit(a, 0.9), Hit(b, 0.8), Hit(c, 0.7)]
    lexical = [Hit(c, 12.0), Hit(b, 3.0), Hit(d, 1.0)]
    fused = rrf_fuse([dense, lexical], 3, rrf_k=1)
    # b: 1/3 + 1/3, c: 1/4 + 1/2, a: 1/2, d: 1/4
    assert [(h.passage.id, round(h.score, 4)) for h in fused] == [("c", 0.75), ("b", 0.6667), ("a", 0.5)]
    assert rrf_fuse([dense, []], 2, rrf_k=60) == [Hit(a, 1 / 61), Hit(b, 1 / 62)]


def test_hybrid_backend_builds_both_indexes_and_fuses(tiny_config) -> None:
    tiny_config.retriever.mode = "hybrid"
    assert "dense flat: 22 passages (dim 384); bm25: 22 passages" in build_indexes(
        tiny_config, progress=False
    )
    meta = index_dir(tiny_config) / SUBDIR / "meta.json"
    stamp = meta.stat().st_mtime_ns
    backend = open_backend(tiny_config)
    assert meta.stat().st_mtime_ns == stamp, "a current BM25 index is loaded, not rebuilt"
    assert backend.mode == "hybrid" and backend.info().num_passages == 22
    queries = ["Who founded Korrin Works?", "Where was Orlen Vask born?"]
    rows = backend.search_batch(queries, 3)
    dense = backend.dense.search_batch(queries, 3)
    lexical = backend.lexical.search_batch(queries, 3)
    for row, d, b in zip(rows, dense, lexical, strict=True):
        assert len(row) == 3 and all(isinstance(h, Hit) for h in row)
        both = {h.passage.id for h in d} & {h.passage.id for h in b}
        assert both <= {h.passage.id for h in row}, "a passage both lists hold is fused into the top"
    tiny_config.retriever.mode = "bm25"
    assert open_backend(tiny_config).fingerprint not in (backend.fingerprint, backend.dense.fingerprint)
