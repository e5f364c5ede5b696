"""Training/eval questions in the seeds' own file formats load unchanged (tests/fixtures/data/README.md)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from searchrl.protocol import SEARCH_R1
from searchrl_trainer.data import load_qa
from tests.conftest import ROOT

DATA = ROOT / "tests" / "fixtures" / "data"
NQ = [
    ("total number of death row inmates in the us?", ["2,718"]),
    ("big little lies season 2 how many episodes?", ["seven"]),
    ("who sang waiting for a girl like you?", ["Foreigner", "British-American rock band Foreigner"]),
]


@pytest.mark.parametrize("name", ["search_r1_nq_train.parquet", "search_r1_nq_train.jsonl"])
def test_search_r1_files_load_with_their_aliases_and_sources(name):
    items = load_qa(DATA / name)
    assert [(it.question, it.golden_answers, it.type) for it in items] == [(q, g, "nq") for q, g in NQ]


def test_the_search_r1_preset_rebuilds_the_files_prompt_column():
    rows = pq.read_table(DATA / "search_r1_nq_train.parquet").to_pylist()
    for row, item in zip(rows, load_qa(DATA / "search_r1_nq_train.parquet"), strict=True):
        assert SEARCH_R1.messages(item.question) == row["prompt"]


def test_research_parquet_loads_its_ground_truth_list():
    items = load_qa(DATA / "research_musique_train.parquet")
    assert [(it.golden_answers, it.type) for it in items] == [(["1960"], "musique"), (["1994"], "musique")]
    assert items[0].question == "When was the institute that owned The Collegian founded?"


def test_a_row_with_only_a_prompt_takes_the_question_from_it(tmp_path):
    row = json.loads((DATA / "search_r1_nq_train.jsonl").read_text().splitlines()[1])
    del row["question"], row["golden_answers"]
    f = tmp_path / "prompt_only.jsonl"
    f.write_text(json.dumps(row) + "\n")
    [item] = load_qa(f)
    assert (item.question, item.golden_answers) == (NQ[1][0], ["seven"])


def test_bad_parquet_rows_name_the_file_and_row(tmp_path):
    f = tmp_path / "bad.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"question": "q", "answer": "a"}, {"question": "q2", "answer": ""}]), f
    )
    with pytest.raises(ValueError, match=r"bad.parquet:row 2: needs 'answer'"):
        load_qa(f)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"junk.parquet: not a parquet file"):
        load_qa(tmp_path / "junk.parquet")
    with pytest.raises(FileNotFoundError, match="data file"):
        load_qa(tmp_path / "missing.parquet")
