"""Shared pieces of the trainer-loop tests: a small config, synthetic trajectories, the issued task ids."""

from __future__ import annotations

import numpy as np

from searchrl.records import PromptTask, Trajectory

N = 2  # group size


def make_cfg(tiny_config):
    cfg = tiny_config
    cfg.trainer.group_size = N
    cfg.trainer.groups_per_step = 2
    cfg.trainer.micro_batch_size = 2
    cfg.trainer.max_staleness = 1
    cfg.trainer.save_every = 1
    cfg.trainer.lr = 1e-3
    cfg.streams.claim_idle_ms = 200
    return cfg


def traj(task: str, i: int, version: int, reward: float, rng: np.random.Generator) -> Trajectory:
    resp = rng.integers(100, 1000, size=12).astype(np.int32)
    mask = np.ones(12, np.uint8)
    mask[4:8] = 0  # an inserted document
    return Trajectory(
        f"{task}/{i}",
        task,
        i,
        N,
        version,
        rng.integers(100, 1000, size=6).astype(np.int32),
        resp,
        mask,
        np.zeros(12, np.float32),
        reward,
        {"num_searches": 1.0},
    )


def issued_tasks(r) -> list[str]:
    return [PromptTask.decode(f).task_id for _, f in r.xrange("prompts")]
