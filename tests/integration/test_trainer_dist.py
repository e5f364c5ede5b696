"""The multi-rank learner (services/trainer/dist.py) on CPU with gloo: 2 ranks compute the same update as 1
rank on the same batch, and the death of any rank takes the trainer down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = {
    "group_size": 2,
    "groups_per_step": 2,
    "micro_batch_size": 1,  # 2 micro-batches per rank at 2 ranks: accumulation across micro-batches and ranks
    "lr": 1e-3,
    "kl_coef": 1e-4,  # the reference model and Reinforce++'s KL reward (log-probs gathered from every rank)
    "decoupled_ppo": True,
}


def run_driver(tmp_path: Path, world_size: int, **extra) -> dict:
    out = tmp_path / f"ws{world_size}.pt"
    settings = {**SETTINGS, **extra, "world_size": world_size, "run_dir": str(tmp_path / f"run{world_size}")}
    subprocess.run(
        [sys.executable, "-m", "tests.integration.dist_driver", str(out), json.dumps(settings)],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    return torch.load(out)


@pytest.mark.parametrize("zero_stage", [2])
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
