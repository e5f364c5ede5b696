"""`searchrl up` with pushed weights (`trainer.weight_sync: gloo`, the CPU twin of 'nccl'): the trainer's rank 0
broadcasts every version into the rollout worker's running vLLM engine through vLLM's weight-transfer API, and
the worker never pulls. Same tiny run as tests/e2e/test_up.py otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STEPS = 2

pytestmark = pytest.mark.slow


def test_every_version_is_pushed_into_the_engine_and_nothing_is_pulled(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "searchrl.cli", "up", "-c", "configs/tiny.yaml", "--steps", str(STEPS)]
        + ["--run-dir", str(run_dir), "--set", "trainer.weight_sync=gloo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    logs = {p.stem: p.read_text() for p in (run_dir / "logs").glob("*.log")}
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n" + "\n".join(
        f"== {k}\n{v[-3000:]}" for k, v in logs.items()
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    t = summary["trainer"]
    assert t["step"] == STEPS
    for w in summary["rollout"]:
        assert w["version"] == t["version"] and w["weights_sha256"] == t["weights_sha256"] != ""
    rollout = "\n".join(v for k, v in logs.items() if k.startswith("rollout"))
    for v in range(1, STEPS + 1):
        assert f"pushed policy v{v} " in rollout
        assert f"pushed v{v} to " in logs["trainer"]
    assert "loaded policy v" not in rollout and "pulling it" not in rollout  # the pull path never ran
