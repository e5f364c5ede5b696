"""`run.cpu_affinity`: the cpu-list syntax, config errors naming the key, and a real `searchrl serve` child that
runs on the cores it was given (or refuses to start, naming the key, when they do not exist)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchrl.affinity import parse_cpu_list
from searchrl.config import ConfigError, load_config
from searchrl.redisio import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "cpus"), [("", set()), ("1", {1}), ("0-2,5", {0, 1, 2, 5}), (" 3 , 1-1 ", {1, 3})]
)
def test_cpu_lists_parse_like_linux(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("bad", ["a", "1-", "3-1", "1;2", "-1"])
def test_a_bad_cpu_list_is_a_config_error_naming_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"cpu_affinity\.trainer"):
        load_config(ROOT / "configs" / "tiny.yaml", [f"run.cpu_affinity.trainer={bad}"])


def _serve_reward(cpus: str) -> subprocess.Popen:
    args = ["serve", "reward", "-c", str(ROOT / "configs" / "tiny.yaml")]
    args += ["--set", f"run.cpu_affinity.reward={cpus}", "--set", f"addresses.reward=127.0.0.1:{free_port()}"]
    return subprocess.Popen(
        [sys.executable, "-m", "searchrl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def test_a_service_runs_on_the_cpus_it_was_given() -> None:
    last = max(os.sched_getaffinity(0))
    proc = _serve_reward(str(last))
    try:
        deadline = time.monotonic() + 60
        while _allowed(proc.pid) != str(last):
            assert proc.poll() is None, proc.stdout and proc.stdout.read()
            assert time.monotonic() < deadline, f"still on cpus {_allowed(proc.pid)}"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)


def test_cpus_that_do_not_exist_stop_the_service_before_it_starts_naming_the_key() -> None:
    proc = _serve_reward("4096")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "run.cpu_affinity.reward: cpus [4096] are not available" in out


def test_the_retriever_encoder_shares_the_usable_cores_among_its_batcher_threads(monkeypatch):
    from searchrl_retriever import service

    monkeypatch.setattr(service.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert service.encoder_threads(0, 2) == 4  # two batches in flight, four cores each
    assert service.encoder_threads(0, 3) == 2
    assert service.encoder_threads(0, 16) == 1  # never 0
    assert service.encoder_threads(3, 2) == 3  # a configured count wins
    monkeypatch.setattr(service.os, "sched_getaffinity", lambda pid: {5})
    assert service.encoder_threads(0, 2) == 1
