"""The multi-rank learner (services/trainer/dist.py) on CPU with gloo: 2 ranks compute the same update as 1
rank on the same batch, and the death of any rank takes the trainer service down; restarted, it resumes from its
checkpoint and trains the rolled-back step again (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from searchrl.audit import checkpoint_step, collect
from searchrl.config import dump_config
from searchrl.records import PromptTask
from searchrl.redisio import free_port
from tests.integration.trainer_kit import make_cfg, traj

pytestmark = pytest.mark.slow  # heavy (several engines or ranks): `make test-slow` (CI runs it)

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = {
    "group_size": 2,
    "groups_per_step": 2,
    "micro_batch_size": 1,  # 2 micro-batches per rank at 2 ranks: accumulation across micro-batches and ranks
    "lr": 1e-3,
    "kl_coef": 1e-4,  # the reference model and Reinforce++'s KL reward (log-probs gathered from every rank)
    "decoupled_ppo": True,
}


# torch.distributed settings of this test process (an in-process learner of an earlier test set MASTER_PORT and
# still listens on it): a child that inherited them would try to bind the same port.
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _DIST_ENV}, **extra}


def run_driver(tmp_path: Path, world_size: int, **extra) -> dict:
    out = tmp_path / f"ws{world_size}.pt"
    settings = {**SETTINGS, **extra, "world_size": world_size, "run_dir": str(tmp_path / f"run{world_size}")}
    subprocess.run(
        [sys.executable, "-m", "tests.integration.dist_driver", str(out), json.dumps(settings)],
        cwd=ROOT,
        env=clean_env(),
        check=True,
        timeout=900,
    )
    return torch.load(out)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_gloo_ranks_give_the_update_of_one_rank(tmp_path, zero_stage):
    one = run_driver(tmp_path, 1, zero_stage=zero_stage)
    two = run_driver(tmp_path, 2, zero_stage=zero_stage)
    for s1, s2 in zip(one["stats"], two["stats"], strict=True):
        for key in ("loss/loss", "loss/pg_loss", "loss/ref_kl_k1", "loss/behaviour_weight_mean", "grad_norm"):
            assert s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-7), key
    moved = 0.0
    for name, w1 in one["after"].items():
        torch.testing.assert_close(two["after"][name], w1, rtol=1e-4, atol=1e-6, msg=name)
        moved = max(moved, (w1 - one["before"][name]).abs().max().item())
    assert moved > 1e-3  # the two steps changed the weights well beyond the tolerance


def _feed(r, answered: set[str], rng) -> None:  # noqa: ANN001
    """Act as the rollout workers: a complete group for every prompt task not answered yet."""
    for _, fields in r.xrange("prompts"):
        task = PromptTask.decode(fields)
        if task.task_id not in answered:
            answered.add(task.task_id)
            for i in range(task.group_size):
                r.xadd(
                    "trajectories", traj(task.task_id, i, task.min_policy_version, float(i % 2), rng).encode()
                )


def _steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _until(proc: subprocess.Popen, done, feed=lambda: None, timeout: float = 600.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"the trainer exited with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        feed()
        time.sleep(0.2)


def test_a_dead_rank_takes_the_trainer_down_and_it_resumes_from_its_checkpoint(
    tiny_config, redis_server, redis_client, tmp_path
):
    cfg = make_cfg(tiny_config)
    t = cfg.trainer
    t.world_size, t.save_every, t.max_steps, t.max_staleness = 2, 2, 50, 0
    t.port, t.metrics_port = free_port(), 0
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    env = clean_env(SEARCHRL_REDIS_URL=redis_server.url)
    cmd = [sys.executable, "-m", "searchrl.cli", "serve", "trainer", "-c", str(tmp_path / "config.yaml")]
    r, rng, answered = redis_client, np.random.default_rng(0), set()
    log = (tmp_path / "trainer.log").open("ab")

    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _until(proc, lambda: _steps(run_dir) >= 3, lambda: _feed(r, answered, rng))
        # step 3 is trained, not checkpointed (save_every 2); no more groups come, so rank 0 waits in gather
        ranks = psutil.Process(proc.pid).children()
        assert len(ranks) == 1  # rank 1, started by the service itself
        ranks[0].kill()
        assert proc.wait(timeout=120) != 0  # the dead rank took the service down
        assert checkpoint_step(run_dir) == 2

        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        # restored at step 2: step 3's groups are still pending in Redis and are trained again
        _until(proc, lambda: _steps(run_dir) >= 4, lambda: _feed(r, answered, rng))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    rep = collect(run_dir, cfg, r)
    assert rep.ok, rep
    assert rep.rolled_back_steps == 1 and rep.committed_step >= 4


def test_two_nodes_meet_through_the_rendezvous_and_stop_together(
    tiny_config, redis_server, redis_client, tmp_path
):
    """trainer.nodes 2 on one machine: node 1's service (SEARCHRL_NODE_RANK=1) serves only health and follows
    rank 0; a SIGTERM to node 0 checkpoints with both ranks and stops node 1 cleanly."""
    cfg = make_cfg(tiny_config)
    t = cfg.trainer
    t.world_size, t.nodes, t.save_every, t.max_steps, t.max_staleness = 2, 2, 50, 50, 0
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True)
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs, logs = [], []
    for node in (0, 1):
        t.port, t.metrics_port, t.health_port = free_port(), 0, 0
        (tmp_path / f"node{node}.yaml").write_text(dump_config(cfg))
        env = clean_env(**rendezvous, SEARCHRL_REDIS_URL=redis_server.url, SEARCHRL_NODE_RANK=str(node))
        logs.append((tmp_path / f"node{node}.log").open("ab"))
        cmd = [
            sys.executable,
            "-m",
            "searchrl.cli",
            "serve",
            "trainer",
            "-c",
            str(tmp_path / f"node{node}.yaml"),
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    r, rng, answered = redis_client, np.random.default_rng(0), set()
    try:
        _until(procs[0], lambda: _steps(run_dir) >= 2, lambda: _feed(r, answered, rng))
        assert procs[1].poll() is None
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=300) == 0
        assert procs[1].wait(timeout=120) == 0  # told to stop by rank 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    assert checkpoint_step(run_dir) >= 2  # the stop's checkpoint, written by both ranks
    assert collect(run_dir, cfg, r).ok
