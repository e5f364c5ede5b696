"""`searchrl up` tried as a new user would, with broken inputs: a config copied elsewhere whose relative paths
do not exist there fails before anything starts, naming the key and the path; a service that dies while
starting is reported with the line of its log that says why, not only "a service exited"."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _up(config: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "searchrl.cli", "up", "-c", str(config), *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_missing_inputs_fail_before_anything_starts(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "configs" / "tiny.yaml", elsewhere / "tiny.yaml")
    r = _up(elsewhere / "tiny.yaml", tmp_path, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert "retriever.corpus:" in r.stderr and "corpus.jsonl does not exist" in r.stderr
    assert "trainer.stages[0].data:" in r.stderr and "nothing started" in r.stderr
    assert not (tmp_path / "run").exists(), "a run dir (Redis, services) was started"


def test_a_service_that_dies_is_reported_with_its_error_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "1", "title": "t"}\n')  # no text: the retriever refuses it
    r = _up(
        ROOT / "configs" / "tiny.yaml",
        ROOT,
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        f"retriever.corpus={corpus}",
        "--set",
        f"retriever.index_dir={tmp_path / 'index'}",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "retriever exited with status" in r.stderr
    assert "needs a 'text' or 'contents' field" in r.stderr, r.stderr
    assert f"log: {tmp_path / 'run'}" in r.stderr
