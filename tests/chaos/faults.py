"""Poison records written straight into the streams, as a client holding the Redis password could.

- prompt tasks: `group_size` as a string (a TypeError in naive validation) and `group_size` 10**9 (a worker that
  samples it allocates without bound);
- trajectories: complete groups of `trainer.group_size` samples for issued tasks, written before the workers
  finish them (as a buggy or mismatched worker would): one group with reward NaN in `meta`, one with a token id
  of 10**9 (past any vocabulary).
"""

from __future__ import annotations

import json

import numpy as np
import redis

from searchrl.config import Config
from searchrl.records import Trajectory
from searchrl.redisio import policy_version_key


def xadd_poison_prompts(r: redis.Redis, cfg: Config) -> list[str]:
    """The two poison tasks; returns their task ids."""
    stage = cfg.trainer.stages[0]
    tasks = {"chaos-poison-prompt-str": "4", "chaos-poison-prompt-huge": 10**9}
    for task_id, group_size in tasks.items():
        meta = {
            "task_id": task_id,
            "question": "Who wrote the poison task?",
            "golden_answers": ["nobody"],
            "group_size": group_size,
            "reward_preset": stage.reward_preset,
            "min_policy_version": 0,
            "stage": stage.name,
        }
        r.xadd(cfg.streams.prompts, {"meta": json.dumps(meta)})
    return list(tasks)


def _group(task_id: str, group_size: int, version: int, reward: float, token: int) -> list[Trajectory]:
    n = 6
    return [
        Trajectory(
            traj_id=f"{task_id}/{i}",
            task_id=task_id,
            sample_index=i,
            group_size=group_size,
            policy_version=version,
            prompt_ids=np.arange(1, 9, dtype=np.int32),
            response_ids=np.array([token, *range(21, 20 + n)], np.int32),
            loss_mask=np.ones(n, np.uint8),
            logprobs=np.full(n, -1.0, np.float32),
            reward=reward,
        )
        for i in range(group_size)
    ]


def xadd_bad_trajectories(r: redis.Redis, cfg: Config, nan_task: str, token_task: str) -> None:
    """Complete groups for two issued tasks, ahead of the workers: every sample of `nan_task` with reward NaN,
    every sample of `token_task` with a token id of 10**9. They carry the announced policy version, so an
    on-policy trainer takes them as fresh (write them right after a step was committed)."""
    g, v = cfg.trainer.group_size, int(r.get(policy_version_key(cfg.streams.key_prefix)) or 0)
    groups = _group(nan_task, g, v, float("nan"), 21) + _group(token_task, g, v, 0.5, 10**9)
    with r.pipeline(transaction=True) as p:
        for t in groups:
            p.xadd(cfg.streams.trajectories, t.encode())
        p.execute()
