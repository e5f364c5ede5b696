"""`python -m tests.integration.dist_driver OUT SETTINGS_JSON`: build the learner through `dist.launch` (which
starts the other ranks itself), run two training steps on a fixed synthetic batch, and save the initial and
updated weights and the step stats to OUT (torch.save). Run as its own process: torch.distributed can be set up
only once per process, and the tests compare world sizes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from searchrl.models import resolve_model
from searchrl.records import Trajectory
from searchrl_trainer.dist import launch
from tests.conftest import tiny_config_at


def batch(groups: int, n: int, seed: int = 0) -> list[Trajectory]:
    """Rows of different lengths (so ranks get different widths), documents masked, rewards per group."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(groups):
        for i in range(n):
            r = int(rng.integers(6, 20))
            mask = np.ones(r, np.uint8)
            mask[2:4] = 0
            out.append(
                Trajectory(
                    f"t{g}/{i}",
                    f"t{g}",
                    i,
                    n,
                    0,
                    rng.integers(100, 1000, int(rng.integers(4, 9))).astype(np.int32),
                    rng.integers(100, 1000, r).astype(np.int32),
                    mask,
                    rng.uniform(-9.0, -5.0, r).astype(np.float32),
                    float(rng.choice([-1.0, 0.5, 1.0])),
                )
            )
    return out


def main() -> None:
    out, settings = sys.argv[1], json.loads(sys.argv[2])
    cfg = tiny_config_at(Path(settings.pop("run_dir")))
    for k, v in settings.items():
        setattr(cfg.trainer, k, v)
    cfg.trainer = cfg.trainer.model_validate(cfg.trainer.model_dump())
    learner = launch(cfg, resolve_model(cfg.model.path))
    before = {k: v.detach().clone() for k, v in learner.state_dict_for_export().items()}
    trajs = batch(cfg.trainer.groups_per_step, cfg.trainer.group_size)
    stats = [learner.train_step(trajs) for _ in range(2)]
    after = {k: v.detach().clone() for k, v in learner.state_dict_for_export().items()}
    torch.save({"before": before, "after": after, "stats": stats}, out)


if __name__ == "__main__":
    main()
