"""Stale-index detection and atomic saves (review L9): a saved index is reused only when the embedder, the
passage prefix and the corpus (ids, titles, texts) are unchanged, and a save that dies half-way never leaves a
meta.json that describes other files than the ones next to it."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from searchrl_retriever.backend import index_dir
from searchrl_retriever.corpus import Passage
from searchrl_retriever.index import META_FILE, PASSAGES_FILE, DenseIndex, IndexKey, corpus_fingerprint

PASSAGES = [Passage("p0", "Orlen Vask", "An inventor."), Passage("p1", "Saldane Press", "A press.")]


def _key(passages: list[Passage], embedder: str = "builtin:all-minilm-l6-v2", prefix: str = "") -> IndexKey:
    return IndexKey(embedder, prefix, corpus_fingerprint(passages))


def _index(passages: list[Passage], seed: int, **key: str) -> DenseIndex:
    vecs = np.random.default_rng(seed).standard_normal((len(passages), 8)).astype(np.float32)
    flat = faiss.IndexFlatIP(8)
    flat.add(vecs)
    return DenseIndex(flat, passages, _key(passages, **key))


@pytest.mark.parametrize(
    "changed",
    [
        [replace(PASSAGES[0], id="p9"), PASSAGES[1]],
        [replace(PASSAGES[0], title="Orlen Vask (inventor)"), PASSAGES[1]],
        [replace(PASSAGES[0], text="An engineer."), PASSAGES[1]],
        [PASSAGES[1], PASSAGES[0]],
        PASSAGES[:1],
    ],
    ids=["id", "title", "text", "order", "count"],
)
def test_corpus_change_makes_the_index_stale(tmp_path: Path, changed: list[Passage]) -> None:
    _index(PASSAGES, 0).save(tmp_path)
    assert DenseIndex.is_current(tmp_path, _key(PASSAGES))
    assert not DenseIndex.is_current(tmp_path, _key(changed))


def test_embedder_or_passage_prefix_change_makes_the_index_stale(tmp_path: Path) -> None:
    _index(PASSAGES, 0, prefix="passage: ").save(tmp_path)
    assert DenseIndex.is_current(tmp_path, _key(PASSAGES, prefix="passage: "))
    assert not DenseIndex.is_current(tmp_path, _key(PASSAGES))
    assert not DenseIndex.is_current(tmp_path, _key(PASSAGES, embedder="/models/e5", prefix="passage: "))


def test_save_load_round_trip(tmp_path: Path) -> None:
    _index(PASSAGES, 0, prefix="passage: ").save(tmp_path)
    loaded = DenseIndex.load(tmp_path)
    assert loaded.passages == PASSAGES and loaded.key == _key(PASSAGES, prefix="passage: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["index.faiss", "passages.jsonl", "meta.json"]
    )


def test_load_refuses_passages_that_do_not_match_the_meta(tmp_path: Path) -> None:
    _index(PASSAGES, 0).save(tmp_path)
    lines = (tmp_path / PASSAGES_FILE).read_text().splitlines()
    (tmp_path / PASSAGES_FILE).write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(ValueError, match="passages.jsonl does not match meta.json"):
        DenseIndex.load(tmp_path)


def _state(d: Path) -> str:
    """'none' when no index is current, else which index the directory holds, after checking it is whole."""
    if not (d / META_FILE).is_file():
        return "none"
    loaded = DenseIndex.load(d)
    return "old" if loaded.passages == PASSAGES else "new"


@pytest.mark.parametrize("crash_at", ["write", "rename 1", "rename 2", "rename 3"])
def test_a_save_that_dies_half_way_leaves_old_or_no_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    _index(PASSAGES, 0).save(tmp_path)
    new = [*PASSAGES, Passage("p2", "Korrin Works", "A workshop.")]

    def disk_dies(*args: object) -> None:
        raise OSError("disk died")

    if crash_at == "write":
        monkeypatch.setattr(faiss, "write_index", disk_dies)
    else:
        renames_left = [int(crash_at.split()[1]) - 1]
        real_replace = os.replace

        def dying_replace(src: str, dst: str) -> None:
            renames_left[0] -= 1
            (real_replace if renames_left[0] >= 0 else disk_dies)(src, dst)

        monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(OSError, match="disk died"):
        _index(new, 1).save(tmp_path)
    monkeypatch.undo()
    assert _state(tmp_path) == ("old" if crash_at == "write" else "none")
    assert not DenseIndex.is_current(tmp_path, _key(new))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temp files are removed"
    _index(new, 1).save(tmp_path)
    assert _state(tmp_path) == "new" and DenseIndex.is_current(tmp_path, _key(new))


def test_build_index_rebuilds_when_the_passage_prefix_changes(tiny_config) -> None:
    from searchrl_retriever.backend import build_dense

    first, embedder = build_dense(tiny_config, progress=False)
    again, _ = build_dense(tiny_config, embedder, progress=False)
    np.testing.assert_array_equal(again.index.reconstruct(0), first.index.reconstruct(0))
    embedder.passage_prefix = "passage: "
    rebuilt, _ = build_dense(tiny_config, embedder, progress=False)
    assert rebuilt.key.passage_prefix == "passage: "
    assert not np.array_equal(rebuilt.index.reconstruct(0), first.index.reconstruct(0))
    assert DenseIndex.load(index_dir(tiny_config)).key == rebuilt.key


def test_meta_records_what_the_vectors_depend_on(tmp_path: Path) -> None:
    _index(PASSAGES, 0, prefix="passage: ").save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta == {
        "embedder": "builtin:all-minilm-l6-v2",
        "passage_prefix": "passage: ",
        "fingerprint": corpus_fingerprint(PASSAGES),
        "index_type": "flat",
        "index_params": "",
        "num_passages": 2,
        "dim": 8,
    }
