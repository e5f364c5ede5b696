"""The shared-prefix learner forward (`trainer.shared_prefix`): a group's prompt runs once and its rows' responses
run on top of its keys/values. It must be the same function of the weights as the plain forward: the same
response logits, the same gradients, and through DeepSpeed the same update (tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from searchrl.models import resolve_model
from searchrl.records import Trajectory
from searchrl_trainer import algos
from searchrl_trainer.learner import collate, response_logits, shared_prefix_logits
from tests.integration.trainer_kit import make_cfg


def group(
    task: str, n: int, prompt_len: int, rng: np.random.Generator, lengths: list[int]
) -> list[Trajectory]:
    """n rows with one prompt and responses of the given lengths (documents masked in the middle)."""
    prompt = rng.integers(100, 1000, size=prompt_len).astype(np.int32)
    rows = []
    for i, r in enumerate(lengths[:n]):
        mask = np.ones(r, np.uint8)
        mask[r // 3 : r // 2] = 0
        rows.append(
            Trajectory(
                f"{task}/{i}", task, i, n, 0, prompt,
                rng.integers(100, 1000, size=r).astype(np.int32),
                mask, np.full(r, -1.0, np.float32), float(i % 2), {},
            )
        )  # fmt: skip
    return rows


def test_same_logits_and_gradients_as_the_plain_forward():
    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-searcher"), dtype=torch.float32)
    rng = np.random.default_rng(0)
    b = collate(group("g", 4, 37, rng, [5, 23, 1, 14]), pad_id=0)
    assert b.shares_prompt()

    def masked_logprob(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
        model.zero_grad()
        logits = fn(model, b, "cpu")
        lp = algos.token_logprobs(logits, b.response_ids)
        (lp * b.mask).sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    plain, g_plain = masked_logprob(response_logits)
    shared, g_shared = masked_logprob(shared_prefix_logits)
    valid = b.attention_mask[:, b.prompt_len :].bool()  # logits past a row's end are padding in both
    torch.testing.assert_close(shared[valid], plain[valid], rtol=1e-4, atol=1e-4)
    for a, c in zip(g_shared, g_plain, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-5)


def test_rows_of_other_prompts_are_not_shared():
    rng = np.random.default_rng(1)
    b = collate(group("a", 2, 9, rng, [4, 6]) + group("b", 2, 9, rng, [4, 6]), pad_id=0)
    assert not b.shares_prompt()
    parts = b.micro_batches(4, group=2)  # never a micro-batch across the two groups
    assert sorted(sorted(p.tolist()) for p in parts) == [[0, 1], [2, 3]]
    assert all(b.rows(p).shares_prompt() for p in parts)


def test_a_step_with_the_shared_prefix_gives_the_plain_steps_update(tiny_config, learner_factory):
    rng = np.random.default_rng(2)
    batch = group("g", 4, 40, rng, [12, 30, 7, 19]) + group("h", 4, 25, rng, [9, 3, 28, 16])
    updated = {}
    for shared in (False, True):
        cfg = make_cfg(tiny_config.model_copy(deep=True))
        cfg.trainer.group_size, cfg.trainer.groups_per_step, cfg.trainer.micro_batch_size = 4, 2, 4
        cfg.trainer.shared_prefix = shared
        learner = learner_factory(cfg)
        stats = learner.train_step(batch)
        assert np.isfinite(stats["loss/loss"])
        updated[shared] = {k: v.detach().clone() for k, v in learner.engine.module.state_dict().items()}
    for k, v in updated[False].items():
        torch.testing.assert_close(updated[True][k], v, rtol=1e-4, atol=1e-5, msg=k)
