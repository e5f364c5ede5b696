"""`searchrl eval` end to end on the tiny config: real vLLM (greedy), in-process retriever, all three modes."""

import json
import subprocess
import sys

from tests.conftest import ROOT


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
    assert results["no-retrieval"]["all"]["searches"] == 0 and results["naive-rag"]["all"]["searches"] == 0
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
