"""A short smoke of the demo path with the tiny model: world generation, the untrained model evaluated in three
modes (`--baselines`), two-stage training through `searchrl up`, the trained one as a search agent with the
held-out curve (`--curve`), report and plots."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(1800)
def test_demo_smoke(tmp_path):
    run_dir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "searchrl.cli",
            "demo",
            "-c",
            "configs/tiny.yaml",
            "--steps",
            "2",
            "--eval-questions",
            "3",
            "--run-dir",
            str(run_dir),
            "--curve",
            "--baselines",
            "--set",
            "trainer.export_every=1",
            "--set",
            f"model.cache_dir={tmp_path / 'cache'}",
            "--set",
            "model.path=builtin:tiny-random",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["before"]) == {"no-retrieval", "naive-rag", "search-agent"}
    assert set(results["after"]) == {"search-agent"}
    assert [s for s, _ in results["curve"]] == [0, 1, 2]
    for name in (
        "report.md",
        "reward_mean.png",
        "num_searches_mean.png",
        "response_len_mean.png",
        "heldout_cem.png",
        "hf/final/config.json",
        "hf/final/model.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    assert (tmp_path / "cache" / "world-seed0" / "test.jsonl").is_file()
    assert "held-out CEM gain" in (run_dir / "report.md").read_text()
    # a quiet console: progress lines and log paths, the engines' own logging in the run dir's log files
    console = proc.stdout + proc.stderr
    assert "ETA" in console and f"log: {run_dir / 'eval-before' / 'eval.log'}" in console
    assert "vllm" not in console.lower() and "deepspeed" not in console.lower(), console[-3000:]
    assert "vllm" in (run_dir / "eval-before" / "eval.log").read_text().lower()
