import json

import pytest

from searchrl_retriever.corpus import load_corpus, parse_passage
from searchrl_trainer.data import Cursor, EpochIterator, load_qa, parse_qa
from tests.conftest import ROOT


def test_passage_forms():
    p = parse_passage({"id": 1, "title": "T", "text": " body "}, "x")
    assert (p.id, p.title, p.text, p.as_document()) == ("1", "T", "body", "T: body")
    s = parse_passage({"id": "7", "contents": '"Some Title"\nthe text'}, "x")  # Search-R1 form
    assert (s.title, s.text) == ("Some Title", "the text")
    assert parse_passage({"id": "8", "contents": "no title line"}, "x").text == "no title line"
    with pytest.raises(ValueError, match="f.jsonl:3: needs a 'text' or 'contents'"):
        parse_passage({"id": "1"}, "f.jsonl:3")


def test_load_corpus_names_file_and_line(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"id": "a", "text": "x"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"c.jsonl:3: not JSON"):
        load_corpus(f)
    with pytest.raises(FileNotFoundError, match="retriever.corpus"):
        load_corpus(tmp_path / "missing.jsonl")


def test_qa_forms():
    assert parse_qa({"question": "q", "answer": "a"}, "x").golden_answers == ["a"]
    assert parse_qa({"question": "q", "golden_answers": ["a", "b"]}, "x").golden_answers == ["a", "b"]
    sr1 = {"question": "q", "reward_model": {"ground_truth": {"target": ["x", "y"]}}}
    assert parse_qa(sr1, "x").golden_answers == ["x", "y"]
    with pytest.raises(ValueError, match="f:2: needs 'answer'"):
        parse_qa({"question": "q", "answer": "  "}, "f:2")


def test_real_r1searcher_files_load():
    """The seed's own data files (shared/ beside the checkout) load with their aliases."""
    path = ROOT.parent / "shared" / "data" / "r1searcher"
    if not path.is_dir():
        pytest.skip("shared/data/r1searcher is not beside this checkout")
    bamboogle = load_qa(path / "bamboogle.jsonl")
    assert len(bamboogle) == 125 and bamboogle[0].golden_answers == ["james madison"]
    assert len(load_qa(path / "stage_1.jsonl")) == 350


def test_epoch_iterator_is_seeded_and_resumable(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(5)))
    items = load_qa(f)
    a = EpochIterator(items, seed=3)
    seq = [a.next() for _ in range(12)]
    assert sorted(x[2].question for x in seq[:5]) == [
        f"q{i}" for i in range(5)
    ]  # each epoch is a permutation
    assert [x[0] for x in seq] == [0] * 5 + [1] * 5 + [2] * 2
    b = EpochIterator(items, seed=3, cursor=Cursor(1, 2))
    assert [b.next() for _ in range(5)] == seq[7:12]
