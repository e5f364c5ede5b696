"""Hand-worked checks of searchrl_trainer.algos; every expected number is derived in the comments."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from searchrl_trainer import algos

LN2 = math.log(2.0)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: torch.Tensor | list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- masked statistics -------------------------------------------------------------------------------------


def test_masked_mean_all_and_per_row():
    x = t([1, 2, 3], [4, 5, 6])
    mask = t([1, 1, 0], [0, 1, 0])
    # selected 1, 2, 5 -> 8 / 3
    close(algos.masked_mean(x, mask), 8 / 3)
    # row 0: (1 + 2) / 2 = 1.5; row 1: 5 / 1 = 5
    close(algos.masked_mean(x, mask, dim=1), [1.5, 5.0])
    # nothing selected -> 0, not NaN
    close(algos.masked_mean(x, torch.zeros_like(x)), 0.0)


def test_masked_whiten_uses_only_masked_entries():
    mask = t([1, 1, 0], [1, 0, 0])
    x = t([1, 3, 100], [5, -40, -7])
    # selected 1, 3, 5: mean 3; biased var = (4 + 0 + 4) / 3 = 8/3; std = sqrt(8/3) = 1.632993
    s = math.sqrt(8 / 3)
    expected = [[-2 / s, 0.0, 0.0], [2 / s, 0.0, 0.0]]  # -1.224745, 0, +1.224745; masked -> 0
    close(algos.masked_whiten(x, mask), expected)
    # changing (even to non-finite) values under mask == 0 changes nothing
    y = t([1, 3, float("nan")], [5, float("inf"), 1e6])
    close(algos.masked_whiten(y, mask), expected)


# --- group baselines -----------------------------------------------------------------------------------------


def test_group_baseline_mean_only_contiguous_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    # group 0 = rows 0..3, mean 0.5 -> [0.5, -0.5, -0.5, 0.5]
    # group 1 = rows 4..7, mean 11/4 = 2.75 -> [-0.75, -0.75, -0.75, 2.25]
    out = algos.group_baseline(rewards, group_size=4, scale_by_std=False)
    close(out, [0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25])


def test_group_baseline_std_scaling_is_unbiased():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    # group 0: deviations +-0.5, unbiased var = 4 * 0.25 / (4 - 1) = 1/3, std = 0.577350
    #   -> +-0.5 / 0.577350 = +-0.866025 (sqrt(3)/2); the biased std 0.5 would give +-1
    # group 1: all equal, std 0 -> 0 / (0 + eps) = 0
    a = math.sqrt(3) / 2
    out = algos.group_baseline(rewards, group_size=4, scale_by_std=True, eps=1e-6)
    close(out, [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])


def test_group_baseline_single_sample_groups_and_bad_shapes():
    # group of one: verl uses mean 0, std 1 -> r / (1 + eps)
    close(algos.group_baseline(torch.tensor([2.0, -1.0]), 1, scale_by_std=True), [2.0, -1.0])
    close(algos.group_baseline(torch.tensor([2.0, -1.0]), 1, scale_by_std=False), [2.0, -1.0])
    with pytest.raises(ValueError):
        algos.group_baseline(torch.tensor([1.0, 2.0, 3.0]), 2, scale_by_std=False)
    with pytest.raises(ValueError):
        algos.group_baseline(torch.zeros(2, 2), 2, scale_by_std=False)


# --- KL estimators -------------------------------------------------------------------------------------------


def test_kl_k1_and_k3_values():
    logp = torch.full((1, 2), math.log(0.5))
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    # k1 = log 0.5 - log 0.25 = ln 2 = 0.693147; equal log-probs -> 0
    close(algos.kl_penalty(logp, ref, "k1"), [[LN2, 0.0]])
    # k3: ref - logp = -ln 2; exp(-ln 2) = 0.5; 0.5 - (-0.693147) - 1 = 0.193147; equal -> 1 - 0 - 1 = 0
    close(algos.kl_penalty(logp, ref, "k3"), [[0.5 + LN2 - 1.0, 0.0]])


def test_kl_k3_is_clamped_like_verl():
    # ref - logp = 30 -> clamped to 20 -> exp(20) - 21 ~ 4.85e8 -> clamped to 10
    close(algos.kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "k3"), [[10.0]])
    with pytest.raises(ValueError):
        algos.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k2")  # type: ignore[arg-type]


# --- advantages ----------------------------------------------------------------------------------------------


def test_reinforce_pp_without_kl():
    rewards = torch.tensor([1.0, 0.0])  # one group of 2 -> baselined [0.5, -0.5]
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    # returns (gamma 1, reward at last generated token): row0 [0.5, 0.5, 0.5, 0], row1 [-0.5, -0.5, 0, 0]
    # whiten over the 5 mask tokens: mean = (1.5 - 1.0) / 5 = 0.1; deviations +0.4 (x3), -0.6 (x2)
    # biased var = (3 * 0.16 + 2 * 0.36) / 5 = 0.24; std = 0.489898
    s = math.sqrt(0.24)
    zeros = torch.zeros(2, 4)
    adv = algos.reinforce_pp_advantages(rewards, 2, mask, zeros, None, kl_coef=0.1)
    close(adv, [[0.4 / s, 0.4 / s, 0.4 / s, 0.0], [-0.6 / s, -0.6 / s, 0.0, 0.0]])


def test_reinforce_pp_kl_reward_position_and_documents():
    rewards = torch.tensor([1.0, 0.0])  # baselined [0.5, -0.5]
    # row 0: generated, DOCUMENT, generated, pad; row 1: generated, generated, then documents (truncated)
    mask = t([1, 0, 1, 0], [1, 1, 0, 0])
    ref = torch.zeros(2, 4)
    # k1 = logp_old - ref; values under mask == 0 (9, 5, 7, 7) must be ignored
    logp_old = t([0.2, 9.0, 0.4, 5.0], [0.1, 0.3, 7.0, 7.0])
    kl_coef = 0.5
    # token rewards = -0.5 * k1 on mask tokens, + baselined reward at the last mask == 1 position:
    #   row0: [-0.1, 0, -0.2 + 0.5, 0] = [-0.1, 0, 0.3, 0]
    #   row1: [-0.05, -0.15 - 0.5, 0, 0] = [-0.05, -0.65, 0, 0]
    # returns (reverse cumsum): row0 [0.2, 0.3, 0.3, 0]; row1 [-0.7, -0.65, 0, 0]
    # whiten over the 4 mask tokens {0.2, 0.3, -0.7, -0.65}: mean = -0.85 / 4 = -0.2125
    #   deviations 0.4125, 0.5125, -0.4875, -0.4375; squares sum 0.861875; var = 0.21546875
    s = math.sqrt(0.21546875)
    expected = [[0.4125 / s, 0.0, 0.5125 / s, 0.0], [-0.4875 / s, -0.4375 / s, 0.0, 0.0]]
    adv = algos.reinforce_pp_advantages(rewards, 2, mask, logp_old, ref, kl_coef)
    close(adv, expected)
    # garbage under the mask changes nothing
    logp_old2 = logp_old.clone()
    logp_old2[0, 1], logp_old2[1, 3] = -123.0, float("inf")
    close(algos.reinforce_pp_advantages(rewards, 2, mask, logp_old2, ref, kl_coef), expected)


def test_reinforce_pp_row_without_generated_tokens_gets_nothing():
    rewards = torch.tensor([1.0, 0.0])  # baselined [0.5, -0.5]; row 1 has no mask tokens, so it is dropped
    mask = t([1, 1], [0, 0])
    # returns row0 [0.5, 0.5]: all equal -> whitened 0; row1 masked -> 0
    adv = algos.reinforce_pp_advantages(rewards, 2, mask, torch.zeros(2, 2), None, 0.0)
    close(adv, torch.zeros(2, 2))


def test_grpo_advantages_broadcast_on_mask():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = t([1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1])
    a = math.sqrt(3) / 2  # see test_group_baseline_std_scaling_is_unbiased
    expected = [[a, 0, a], [-a, -a, 0], [-a, 0, 0], [0, a, a]]
    close(algos.grpo_advantages(rewards, 4, mask), expected)


def test_rloo_leave_one_out_baseline():
    # A_i = r_i - mean_{j != i} r_j (verl compute_rloo_outcome_advantage; TRL RLOO's baseline).
    # group [1, 0, 0, 1]: r0 = 1 - (0 + 0 + 1)/3 = 2/3; r1 = 0 - (1 + 0 + 1)/3 = -2/3; r2 = -2/3; r3 = 2/3
    # group [3, 1]: 3 - 1 = 2, 1 - 3 = -2
    mask4 = t([1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1])
    b = 2 / 3
    expected = [[b, 0, b], [-b, -b, 0], [-b, 0, 0], [0, b, b]]
    close(algos.rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, mask4), expected)
    close(algos.rloo_advantages(torch.tensor([3.0, 1.0]), 2, torch.ones(2, 2)), [[2, 2], [-2, -2]])
    # a lone sample keeps its raw reward (verl: no other sample, baseline 0)
    close(algos.rloo_advantages(torch.tensor([5.0, -1.0]), 1, torch.ones(2, 1)), [[5], [-1]])
    # a document token (mask 0) gets nothing
    close(algos.rloo_advantages(torch.tensor([2.0, 0.0]), 2, t([1, 0], [0, 1])), [[2, 0], [0, -2]])


@given(
    st.integers(min_value=2, max_value=6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.floats(-10, 10, allow_nan=False), min_size=n, max_size=3 * n).map(
                lambda xs, n=n: xs[: len(xs) // n * n]
            ),
        )
    )
)
def test_rloo_is_the_rescaled_group_mean_baseline(case):
    # r_i - mean_{j!=i} r_j = n/(n-1) * (r_i - mean_j r_j): RLOO is the unscaled group baseline times n/(n-1),
    # and each group's advantages sum to 0.
    n, xs = case
    rewards = torch.tensor(xs, dtype=torch.float64)
    adv = algos.rloo_advantages(rewards, n, torch.ones(len(xs), 1, dtype=torch.float64))[:, 0]
    centered = algos.group_baseline(rewards, n, scale_by_std=False).double()
    close(adv.double(), centered * n / (n - 1), atol=1e-4)
    close(adv.view(-1, n).sum(dim=1).double(), torch.zeros(len(xs) // n, dtype=torch.float64), atol=1e-4)


def test_advantages_dispatch_on_the_configured_algo():
    rewards, mask = torch.tensor([3.0, 1.0]), torch.ones(2, 1)
    zeros = torch.zeros(2, 1)
    close(algos.advantages("rloo", rewards, 2, mask, zeros, None, 0.0), [[2], [-2]])
    close(
        algos.advantages("grpo", rewards, 2, mask, zeros, None, 0.0), algos.grpo_advantages(rewards, 2, mask)
    )
    expected = algos.reinforce_pp_advantages(rewards, 2, mask, zeros, None, 0.0)
    close(algos.advantages("reinforce_pp", rewards, 2, mask, zeros, None, 0.0), expected)
    with pytest.raises(ValueError, match="unknown algo 'ppo'"):
        algos.advantages("ppo", rewards, 2, mask, zeros, None, 0.0)  # type: ignore[arg-type]


# --- policy loss ---------------------------------------------------------------------------------------------


def test_ppo_clip_and_document_tokens_have_zero_gradient():
    r = math.log(1.5)
    # tokens: [ratio 1.5 A=+1 | DOCUMENT ratio 1.5 A=+5 | ratio 1.5 A=-1 | pad]
    logp = torch.tensor([[r, r, r, 0.0]], requires_grad=True)
    logp_old = torch.zeros(1, 4)
    adv = t([1.0, 5.0, -1.0, 3.0])
    mask = t([1, 0, 1, 0])
    loss, stats = algos.policy_loss(logp, logp_old, adv, mask, clip_eps=0.2)
    # t0: max(-1 * 1.5, -1 * 1.2) = -1.2 (clipped branch, constant in logp -> zero gradient)
    # t2: max(+1 * 1.5, +1 * 1.2) = 1.5 (unclipped; d/dlogp = -A * ratio = 1.5)
    # token-mean over 2 tokens: (-1.2 + 1.5) / 2 = 0.15; gradient [0, 0, 1.5 / 2, 0]
    close(loss, 0.15)
    loss.backward()
    close(logp.grad, [[0.0, 0.0, 0.75, 0.0]])
    # clipped branch active on t0 only (-1.2 > -1.5), not on t2 (1.2 < 1.5) -> 0.5
    assert stats["clip_frac"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(-r, abs=1e-6)  # mean of (0 - ln 1.5) = -0.405465
    assert stats["ratio_mean"] == pytest.approx(1.5, abs=1e-6)


def test_ppo_inside_trust_region_is_plain_surrogate():
    logp = torch.zeros(1, 2, requires_grad=True)
    # ratio 1: loss = mean(-A) = -(2 - 1) / 2 = -0.5; gradient -A / 2 = [-1, 0.5]
    loss, stats = algos.policy_loss(logp, torch.zeros(1, 2), t([2.0, -1.0]), t([1, 1]), clip_eps=0.2)
    close(loss, -0.5)
    loss.backward()
    close(logp.grad, [[-1.0, 0.5]])
    assert stats["clip_frac"] == 0.0


def test_truncated_is_weights_cap_and_use():
    learner = torch.tensor([[LN2, math.log(0.5), math.log(10.0)]], requires_grad=True)
    behaviour = torch.zeros(1, 3)
    # exp(ln 2) = 2; exp(ln 0.5) = 0.5; exp(ln 10) = 10 -> capped at 3
    w = algos.truncated_is_weights(learner, behaviour, cap=3.0)
    close(w, [[2.0, 0.5, 3.0]])
    assert not w.requires_grad
    logp = torch.zeros(1, 2, requires_grad=True)
    # ratio 1, A = 1: per-token -1 * w = [-2, -0.5] -> mean -1.25; gradient -A * w / 2 = [-1, -0.25]
    loss, _ = algos.policy_loss(logp, torch.zeros(1, 2), t([1.0, 1.0]), t([1, 1]), 0.2, tis_weights=w[:, :2])
    close(loss, -1.25)
    loss.backward()
    close(logp.grad, [[-1.0, -0.25]])


# --- logits helpers ------------------------------------------------------------------------------------------


def test_token_logprobs_hand_case_and_matches_log_softmax():
    # logits [0, ln 3]: softmax [0.25, 0.75]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    close(algos.token_logprobs(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.25)]])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    close(algos.token_logprobs(logits, labels), ref)
    close(
        algos.token_logprobs(logits.bfloat16(), labels),
        torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1),
    )


def test_entropy_from_logits():
    close(algos.entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7.0)))
    # softmax [0.25, 0.75]: H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(algos.entropy_from_logits(torch.tensor([[[0.0, math.log(3.0)]]])), [[h]])
    # huge equal logits stay finite: ln 2
    close(algos.entropy_from_logits(torch.tensor([[[1000.0, 1000.0]]])), [[LN2]])


# --- total loss ----------------------------------------------------------------------------------------------


def _loss_inputs():
    logp = torch.zeros(1, 3, requires_grad=True)
    logp_old = torch.zeros(1, 3)
    adv = t([1.0, 7.0, -1.0])
    mask = t([1, 0, 1])  # middle token is a document
    ref = torch.full((1, 3), -LN2)  # ref - logp = -ln 2 -> k3 = 0.193147 per token
    entropy = t([1.0, 100.0, 3.0])  # masked 100 must not count -> mean 2
    return logp, logp_old, adv, mask, ref, entropy


def test_compute_loss_grpo_kl_and_entropy():
    logp, logp_old, adv, mask, ref, entropy = _loss_inputs()
    loss, stats = algos.compute_loss("grpo", logp, logp_old, adv, mask, 0.2, 0.1, ref, entropy, 0.01)
    # pg = mean(-1, +1) = 0; kl = 0.1 * 0.193147 = 0.0193147; entropy bonus = -0.01 * 2 = -0.02
    k3 = 0.5 + LN2 - 1.0
    close(loss, 0.1 * k3 - 0.02)
    assert stats["kl_loss"] == pytest.approx(k3, abs=1e-6)
    assert stats["entropy"] == pytest.approx(2.0)
    loss.backward()
    # d pg / d logp = -A / 2 = [-0.5, 0, 0.5]; d k3 / d logp = 1 - exp(ref - logp) = 0.5 -> 0.1 * 0.5 / 2 = 0.025
    close(logp.grad, [[-0.475, 0.0, 0.525]])


def test_compute_loss_rloo_takes_the_kl_as_a_loss_term_like_grpo():
    logp, logp_old, adv, mask, ref, entropy = _loss_inputs()
    loss, stats = algos.compute_loss("rloo", logp, logp_old, adv, mask, 0.2, 0.1, ref, entropy, 0.01)
    # as grpo: pg 0 + 0.1 * k3 - 0.01 * 2
    close(loss, 0.1 * (0.5 + LN2 - 1.0) - 0.02)
    assert "kl_loss" in stats
    with pytest.raises(ValueError, match="unknown algo 'ppo'"):
        algos.compute_loss("ppo", logp, logp_old, adv, mask, 0.2, 0.1, ref)  # type: ignore[arg-type]


def test_compute_loss_reinforce_pp_has_no_kl_term():
    logp, logp_old, adv, mask, ref, entropy = _loss_inputs()
    loss, stats = algos.compute_loss("reinforce_pp", logp, logp_old, adv, mask, 0.2, 0.1, ref, entropy, 0.01)
    # pg = 0, no KL loss, entropy bonus -0.02
    close(loss, -0.02)
    assert "kl_loss" not in stats
    assert stats["ref_kl_k1"] == pytest.approx(LN2, abs=1e-6)  # logp - ref = ln 2
    loss.backward()
    close(logp.grad, [[-0.5, 0.0, 0.5]])
    with pytest.raises(ValueError):
        algos.compute_loss("ppo", logp, logp_old, adv, mask, 0.2, 0.0, None)  # type: ignore[arg-type]
