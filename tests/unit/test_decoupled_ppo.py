"""Decoupled PPO (AReaL) in searchrl_trainer.algos, against hand-computed values.

Three policies: behaviour (vLLM's log-probs in the trajectory), proximal (the learner's recomputed log-probs of
the pre-update weights) and current (the training forward). The PPO ratio is current / proximal; each token is
weighted by behaviour importance proximal / behaviour, and a token whose weight exceeds the cap is left out of
the loss but still counted in its denominator (AReaL ppo_actor_loss_fn, behav_imp_weight_cap).
"""

from __future__ import annotations

import math

import torch

from searchrl_trainer import algos


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:  # noqa: ANN001
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_behaviour_weights_drop_tokens_above_the_cap() -> None:
    prox = torch.tensor([[math.log(2.0), math.log(0.5), math.log(10.0), float("nan")]])
    behaviour = torch.zeros(1, 4)
    # exp(ln 2) = 2, exp(ln 0.5) = 0.5 kept; exp(ln 10) = 10 > cap 5 -> 0 (not 5: filtered, not truncated);
    # a NaN (a document token's junk value) is never kept
    w = algos.decoupled_behaviour_weights(prox, behaviour, cap=5.0)
    close(w, [[2.0, 0.5, 0.0, 0.0]])
    assert not w.requires_grad


def test_behaviour_weights_never_overflow() -> None:
    w = algos.decoupled_behaviour_weights(torch.tensor([[500.0]]), torch.tensor([[-500.0]]), cap=5.0)
    close(w, [[0.0]])


def test_decoupled_loss_and_gradient_by_hand() -> None:
    # token 0: ratio 1.1 (inside the trust region), A = +1, behaviour weight 2 -> -1 * 1.1 * 2 = -2.2
    # token 1: ratio 1.5, A = +1 -> clipped at 1.2: max(-1.5, -1.2) = -1.2, weight 0.5 -> -0.6
    # token 2: ratio 0.5, A = -1 -> max(0.5, 0.8) = 0.8, weight 10 > cap 5 -> dropped, contributes 0
    # token 3: a document token (mask 0) -> nothing
    # loss = (-2.2 - 0.6 + 0) / 3 (the dropped token stays in the denominator) = -0.93333
    logp = torch.tensor([[math.log(1.1), math.log(1.5), math.log(0.5), 0.0]], requires_grad=True)
    prox = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    behaviour = torch.tensor([[-math.log(2.0), math.log(2.0), -math.log(10.0), float("nan")]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = algos.decoupled_policy_loss(
        logp, prox, behaviour, adv, mask, clip_eps=0.2, behaviour_cap=5.0
    )
    close(loss, -2.8 / 3)
    loss.backward()
    # d/dlogp of -A * ratio * w / 3: token 0 -> -1.1 * 2 / 3; clipped and dropped tokens have no gradient
    close(logp.grad, [[-2.2 / 3, 0.0, 0.0, 0.0]])
    close(torch.tensor(stats["behaviour_dropped_frac"]), 1 / 3)
    close(torch.tensor(stats["behaviour_weight_mean"]), (2.0 + 0.5) / 2)  # over the kept tokens


def test_decoupled_loss_reduces_to_ppo_when_behaviour_equals_proximal() -> None:
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 5, generator=g)
    prox = logp + 0.3 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.3).float()
    plain, _ = algos.policy_loss(logp, prox, adv, mask, 0.2)
    decoupled, _ = algos.decoupled_policy_loss(logp, prox, prox, adv, mask, 0.2, behaviour_cap=5.0)
    close(decoupled, plain.item())


def test_compute_loss_takes_the_decoupled_surrogate_with_behaviour_logprobs() -> None:
    logp = torch.tensor([[math.log(1.1), math.log(1.5), math.log(0.5), 0.0]])
    prox = torch.zeros(1, 4)
    behaviour = torch.tensor([[-math.log(2.0), math.log(2.0), -math.log(10.0), 0.0]])
    adv, mask = torch.tensor([[1.0, 1.0, -1.0, 5.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = algos.compute_loss(
        "grpo", logp, prox, adv, mask, 0.2, 0.0, None, logp_behaviour=behaviour, behaviour_cap=5.0
    )
    close(loss, -2.8 / 3)  # as in test_decoupled_loss_and_gradient_by_hand
    assert stats["behaviour_dropped_frac"] > 0
