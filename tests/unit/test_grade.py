"""R1-Searcher's difficulty levels and the stage files `searchrl grade` writes."""

import json

from searchrl.grade import level, write_grades
from searchrl_trainer.data import QAItem, load_qa


def test_levels_follow_the_papers_thresholds():
    assert [level(r, 10, 20) for r in (1, 9, 10, 20, 21, 30, None)] == [
        "easy",
        "easy",
        "medium",
        "medium",
        "difficult",
        "difficult",
        "unsolved",
    ]


def test_stage_files_hold_medium_then_medium_and_difficult(tmp_path):
    items = [QAItem(f"q{i}", [f"a{i}"]) for i in range(4)] + [QAItem("q4", ["x", "y"])]
    results = [
        (1, ["a0"]),
        (12, [None] * 11 + ["a1"]),
        (25, ["b"] * 25),
        (None, ["c"] * 30),
        (15, ["y"] * 15),
    ]
    counts = write_grades(tmp_path, items, results, 10, 20)
    assert counts == {"easy": 1, "medium": 2, "difficult": 1, "unsolved": 1}
    grades = [json.loads(x) for x in (tmp_path / "grades.jsonl").read_text().splitlines()]
    assert grades[1] == {
        "idx": 1,
        "question": "q1",
        "answer": "a1",
        "level": "medium",
        "rollouts_to_solve": 12,
        "rollouts": 12,
        "pred_anses": [None] * 11 + ["a1"],
    }
    assert [i.question for i in load_qa(tmp_path / "stage_1.jsonl")] == ["q1", "q4"]
    stage2 = load_qa(tmp_path / "stage_2.jsonl")
    assert [i.question for i in stage2] == ["q1", "q2", "q4"] and stage2[2].golden_answers == ["x", "y"]
