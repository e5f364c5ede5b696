"""`searchrl eval` and `searchrl grade` end to end on the tiny config: real vLLM, in-process retriever."""

import json
import subprocess
import sys

import pytest

from searchrl_trainer.data import load_qa
from tests.conftest import ROOT


def _cli(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "searchrl.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_eval_three_modes(tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "searchrl.cli",
            "eval",
            "-c",
            "configs/tiny.yaml",
            "--data",
            "data/tiny/train.jsonl",
            "--limit",
            "6",
            "--out",
            str(out),
            "--set",
            f"run.run_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"no-retrieval", "naive-rag", "search-agent"}
    for mode, by_type in results.items():
        m = by_type["all"]
        assert m["n"] == 6 and all(0.0 <= m[k] <= 1.0 for k in ("em", "cem", "f1")), mode
        records = [json.loads(x) for x in (out / f"{mode}.jsonl").read_text().splitlines()]
        assert len(records) == 6 and all(r["golden_answers"] for r in records)
    # searches = retriever calls per question
    assert results["no-retrieval"]["all"]["searches"] == 0 and results["naive-rag"]["all"]["searches"] == 1
    assert "search-agent" in proc.stdout and "CEM" in proc.stdout


def test_eval_rejects_unknown_mode():
    proc = subprocess.run(
        [sys.executable, "-m", "searchrl.cli", "eval", "--data", "x.jsonl", "--mode", "oracle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--mode" in proc.stderr


@pytest.mark.slow
def test_suite_r1searcher_all_five_modes_one_table(tmp_path):
    """CI slice: one question of each R1-Searcher test set against the tiny world, every mode."""
    out = tmp_path / "suite"
    proc = _cli(
        "eval", "-c", "configs/tiny.yaml", "--suite", "r1searcher", "--limit", "1", "--out", str(out),
        "--set", f"run.run_dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["suite"] == "r1searcher"
    results = summary["results"]
    assert list(results) == ["hotpotqa", "2wiki", "musique", "bamboogle"]
    modes = ["no-retrieval", "naive-rag", "iter-retgen", "ircot", "search-agent"]
    for name, by_mode in results.items():
        assert list(by_mode) == modes, name
        assert by_mode["iter-retgen"]["all"]["searches"] == 3  # FlashRAG's 3 iterations, one retrieval each
        assert 1 <= by_mode["ircot"]["all"]["searches"] <= 3  # the question, then at most 2 thoughts
        assert by_mode["naive-rag"]["all"]["judge"] is None  # not judged without --judge
        assert (out / name / "ircot.jsonl").is_file()
    table = (out / "table.txt").read_text().splitlines()
    assert table[0].split()[:2] == ["set", "mode"] and "judge" in table[0] and len(table) == 1 + 4 * 5
    assert table[1] in proc.stdout


def test_judge_endpoint_down_fails_first_naming_the_url(tmp_path):
    url = "http://127.0.0.1:9/v1"
    proc = _cli(
        "eval", "-c", "configs/tiny.yaml", "--data", "data/tiny/train.jsonl", "--limit", "1",
        "--judge-url", url, "--judge-model", "m", "--out", str(tmp_path), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"judge endpoint {url}/models is unreachable" in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_eval_needs_data_or_suite():
    proc = _cli("eval", "-c", "configs/tiny.yaml", timeout=60)
    assert proc.returncode == 2 and "--data / --suite" in proc.stderr


@pytest.mark.slow
def test_grade_writes_levels_and_stage_files(tmp_path):
    out = tmp_path / "grade"
    proc = _cli(
        "grade", "-c", "configs/tiny.yaml", "--data", "data/tiny/train.jsonl", "--limit", "4", "--out", str(out),
        "--set", "eval.grade_rollouts=4", "--set", "eval.grade_easy_below=2", "--set", "eval.grade_difficult_above=3",
        "--set", f"run.run_dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    grades = [json.loads(x) for x in (out / "grades.jsonl").read_text().splitlines()]
    assert len(grades) == 4 and "graded 4 questions" in proc.stdout
    expect = {None: "unsolved", 1: "easy", 2: "medium", 3: "medium", 4: "difficult"}
    for g in grades:
        assert g["level"] == expect[g["rollouts_to_solve"]]
        assert g["rollouts"] == len(g["pred_anses"]) == (g["rollouts_to_solve"] or 4)
    for stage, levels in (("stage_1", {"medium"}), ("stage_2", {"medium", "difficult"})):
        want = [g["question"] for g in grades if g["level"] in levels]
        text = (out / f"{stage}.jsonl").read_text()
        assert [json.loads(x)["question"] for x in text.splitlines()] == want
        if want:
            assert [i.question for i in load_qa(out / f"{stage}.jsonl")] == want
