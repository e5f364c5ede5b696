"""Every advantage estimator of `trainer.algo` drives a real learner step the right way (the tiny model, DeepSpeed
on CPU): with one rewarded and one unrewarded sample in a group, the rewarded one becomes more likely."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from searchrl.config import TrainerConfig
from searchrl.records import Trajectory
from searchrl_trainer import algos
from searchrl_trainer.learner import collate
from tests.integration.trainer_kit import make_cfg, traj


@pytest.mark.parametrize("algo", get_args(TrainerConfig.model_fields["algo"].annotation))
def test_estimator_step_raises_likelihood_of_rewarded_sample(tiny_config, learner_factory, algo: str) -> None:
    cfg = make_cfg(tiny_config)
    cfg.trainer.algo = algo
    cfg.trainer.groups_per_step = 1
    cfg.trainer.kl_coef = 0.0
    learner = learner_factory(cfg)
    rng = np.random.default_rng(1)
    good, bad = traj("g", 0, 0, 1.0, rng), traj("g", 1, 0, 0.0, rng)

    def seq_logprob(t: Trajectory) -> float:
        b = collate([t], learner.pad_id)
        r = b.response_ids.shape[1]
        with torch.no_grad():
            out = learner.engine.module(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                position_ids=b.position_ids,
                use_cache=False,
                logits_to_keep=r + 1,
            )
        lp = algos.token_logprobs(out.logits[:, :r].float(), b.response_ids)
        return float((lp * b.mask).sum())

    g0, b0 = seq_logprob(good), seq_logprob(bad)
    stats = learner.train_step([good, bad])
    assert np.isfinite(stats["loss/loss"])
    assert seq_logprob(good) > g0 and seq_logprob(bad) < b0
