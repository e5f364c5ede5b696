"""Advantages, KL penalties and policy losses for Reinforce++ (R1-Searcher), GRPO (ReSearch) and RLOO.

Contract:
- Pure tensor functions: no I/O, no distributed calls, no model objects, no optimiser state.
- Every per-token tensor is shaped [B, T] over RESPONSE tokens only (the prompt is already cut off).
- `mask` is a float [B, T] tensor: 1 on tokens the policy generated, 0 on padding AND on retrieved-document
  tokens the rollout worker inserted. Masked tokens take no part in the policy loss, the KL term or advantage
  normalisation, and receive advantage 0 ("Loss masking", R1-Searcher / Search-R1). Values stored under
  mask == 0 never change any result, even when they are non-finite.
- Rewards are one scalar per row, [B]. Rows are grouped contiguously by prompt: with group size n, rows
  [0..n-1] are the n samples of the first prompt, [n..2n-1] of the second, and so on.
- Advantage functions run without autograd and return detached tensors; loss functions keep the graph
  through `logp` (and `entropy`) only.

This module does not know about tokenizers, tags, rollouts, reward rules or how a batch is split into
micro-batches: token-mean losses here are means over the tensors passed in (the caller chooses the scope).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

Algo = Literal["reinforce_pp", "grpo", "rloo"]
# Estimators whose KL to the reference is a k3 loss term (verl use_kl_loss) rather than a per-token reward.
_KL_LOSS_ALGOS = ("grpo", "rloo")
KLKind = Literal["k1", "k3"]

# exp() of a log-ratio beyond this is treated as saturated; verl clamps the log-ratio to +-20 before exp in
# both its PPO loss and low_var_kl.
_LOG_RATIO_CLAMP = 20.0


def _select(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask != 0, else 0 (so NaN/inf under the mask cannot leak into sums or gradients)."""
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over entries with mask != 0 (mask values act as weights); 0 where nothing is selected."""
    mask = mask.to(x.dtype) if x.is_floating_point() else mask.float()
    total = (_select(x, mask) * mask).sum() if dim is None else (_select(x, mask) * mask).sum(dim=dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp_min(1e-8) * (count > 0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std with mean and (biased) variance over mask != 0 entries only; masked positions are 0.

    Biased variance and rsqrt(max(var, eps)) as OpenRLHF's Reinforce++ batch normalisation of advantages
    (experience_maker.py), which R1-Searcher's trainer is built on.
    """
    mean = masked_mean(x, mask)
    centered = _select(x - mean, mask)
    var = masked_mean(centered.square(), mask)
    return centered * torch.rsqrt(var.clamp_min(eps)) * (mask != 0)


def group_baseline(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool, eps: float = 1e-6
) -> torch.Tensor:
    """r - mean(group), optionally divided by (std(group) + eps); rows grouped contiguously. Returns [B].

    std is the unbiased (Bessel-corrected) sample std, as `torch.std` in verl's
    compute_grpo_outcome_advantage (GRPO, ReSearch). With group_size == 1 verl uses mean 0 and std 1, so a
    lone sample keeps its raw reward rather than getting a zero signal; we do the same.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not a whole number of groups of {group_size}"
        )
    r = rewards.detach().float()
    if group_size == 1:
        return r / (1.0 + eps) if scale_by_std else r.clone()
    grouped = r.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centered.reshape(-1)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind) -> torch.Tensor:
    """Per-token KL estimate of pi (logp) from the reference (ref_logp), [B, T] (Schulman's k1 / k3).

    k1 = logp - ref_logp (unclamped, as verl's "k1").
    k3 = exp(ref - logp) - (ref - logp) - 1, verl's "low_var_kl": the log-ratio is clamped to [-20, 20]
    before exp and the result to [-10, 10] for numerical stability.
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_ratio = torch.clamp(ref_logp - logp, min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"unknown KL kind {kind!r}; expected 'k1' or 'k3'")


def _last_generated_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last position with mask != 0 in each row, and whether the row has any such position."""
    on = (mask != 0).long()
    last = mask.size(1) - 1 - on.flip(dims=[1]).argmax(dim=1)
    return last, on.any(dim=1)


@torch.no_grad()
def reinforce_pp_advantages(
    rewards: torch.Tensor,
    group_size: int,
    mask: torch.Tensor,
    logp_old: torch.Tensor,
    ref_logp: torch.Tensor | None,
    kl_coef: float,
) -> torch.Tensor:
    """R1-Searcher's "Reinforce++ as run" token advantages, [B, T], detached, 0 where mask == 0.

    1. Baseline: reward minus its group mean, no std scaling (OpenRLHF "reinforce_baseline").
    2. Token rewards: -kl_coef * k1(logp_old, ref_logp) on mask == 1 tokens, plus the baselined reward at
       the last generated token (last position with mask == 1; a truncated row may end in document tokens,
       which get nothing). Masked tokens contribute no reward.
    3. Returns: reverse cumulative sum over the row with gamma = 1.
    4. Whitened over all mask == 1 tokens of the batch; masked positions set to 0.
    """
    mask_f = (mask != 0).float()
    baseline = group_baseline(rewards, group_size, scale_by_std=False)
    token_rewards = torch.zeros_like(mask_f)
    if ref_logp is not None and kl_coef > 0:
        k1 = kl_penalty(logp_old.float(), ref_logp.float(), "k1")
        token_rewards = -kl_coef * _select(k1, mask_f)
    last, has_tokens = _last_generated_index(mask_f)
    outcome = (baseline.to(mask_f.device) * has_tokens).unsqueeze(1)
    token_rewards = token_rewards.scatter_add(1, last.unsqueeze(1), outcome)
    # gamma = 1: the return at t is the sum of token rewards from t to the end of the row.
    returns = token_rewards.flip(dims=[1]).cumsum(dim=1).flip(dims=[1])
    return masked_whiten(returns, mask_f)


@torch.no_grad()
def grpo_advantages(
    rewards: torch.Tensor, group_size: int, mask: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO outcome advantage (ReSearch): (r - group mean) / (group std + eps) on every mask == 1 token."""
    mask_f = (mask != 0).float()
    adv = group_baseline(rewards, group_size, scale_by_std=True, eps=eps).to(mask_f.device)
    return adv.unsqueeze(1) * mask_f


@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, group_size: int, mask: torch.Tensor) -> torch.Tensor:
    """RLOO outcome advantage on every mask == 1 token: r_i minus the mean of the OTHER rewards of its group.

    A_i = r_i - sum_{j != i} r_j / (n - 1) = n / (n - 1) * (r_i - group mean), as verl's
    compute_rloo_outcome_advantage and TRL's RLOO baseline (Ahmadian et al. 2024), with no std scaling and no
    batch whitening. A lone sample (n = 1) keeps its raw reward, as in verl. The KL is a loss term
    (`compute_loss`), as verl with use_kl_loss; TRL's variant that folds it into the reward is not offered.
    """
    mask_f = (mask != 0).float()
    adv = group_baseline(rewards, group_size, scale_by_std=False)
    if group_size > 1:
        adv = adv * (group_size / (group_size - 1))
    return adv.to(mask_f.device).unsqueeze(1) * mask_f


def advantages(
    algo: Algo,
    rewards: torch.Tensor,
    group_size: int,
    mask: torch.Tensor,
    logp_old: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    kl_coef: float,
) -> torch.Tensor:
    """Token advantages [B, T] of the estimator `algo` (trainer.algo); `logp_old`, `ref_logp` and `kl_coef`
    feed Reinforce++'s per-token KL reward only."""
    if algo == "grpo":
        return grpo_advantages(rewards, group_size, mask)
    if algo == "rloo":
        return rloo_advantages(rewards, group_size, mask)
    if algo == "reinforce_pp":
        return reinforce_pp_advantages(rewards, group_size, mask, logp_old, ref_logp, kl_coef)
    raise ValueError(f"unknown algo {algo!r}; expected 'reinforce_pp', 'grpo' or 'rloo'")


def truncated_is_weights(
    logp_learner_old: torch.Tensor, logp_behaviour: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights min(pi_learner_old / pi_behaviour, cap) per token, detached.

    Corrects for the rollout engine (behaviour policy) differing numerically or by staleness from the
    learner's own log-probs of the same weights.
    """
    log_ratio = (logp_learner_old - logp_behaviour).detach().float()
    return torch.exp(log_ratio.clamp(max=_LOG_RATIO_CLAMP)).clamp(max=cap)


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    tis_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, token-mean over the mask == 1 tokens of the whole batch (verl "token-mean").

    per-token loss = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), ratio = exp(logp - logp_old),
    multiplied by `tis_weights` when given. Stats: clip_frac (share of tokens where the clipped branch is
    active), approx_kl = masked mean of logp_old - logp, ratio_mean.
    """
    log_ratio = torch.clamp(logp - logp_old.detach(), min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach()
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "pg_loss": loss.item(),
            "clip_frac": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(logp_old - logp, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def decoupled_behaviour_weights(
    logp_proximal: torch.Tensor, logp_behaviour: torch.Tensor, cap: float
) -> torch.Tensor:
    """Decoupled PPO's behaviour importance weights pi_proximal / pi_behaviour per token, detached; a token
    whose weight exceeds `cap` (or is not finite) gets 0: it is filtered out, not truncated (AReaL's
    behav_imp_weight_cap), so very stale tokens do not steer the update at all."""
    log_ratio = (logp_proximal - logp_behaviour).detach().float()
    w = torch.exp(log_ratio.clamp(max=_LOG_RATIO_CLAMP))
    keep = torch.isfinite(w) & (w <= cap)
    return torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))


def decoupled_policy_loss(
    logp: torch.Tensor,
    logp_proximal: torch.Tensor,
    logp_behaviour: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    behaviour_cap: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Decoupled PPO (AReaL): the clipped surrogate on ratio pi / pi_proximal, each token weighted by
    `decoupled_behaviour_weights(proximal, behaviour, behaviour_cap)`; token-mean over ALL mask == 1 tokens
    (a filtered token stays in the denominator, as in AReaL). The proximal policy is the learner's recomputed
    log-probs of the pre-update weights, the behaviour policy the rollout engine's (possibly stale) log-probs.
    Extra stats: behaviour_weight_mean over the kept tokens, behaviour_dropped_frac of the mask == 1 tokens."""
    w = decoupled_behaviour_weights(logp_proximal, logp_behaviour, behaviour_cap)
    loss, stats = policy_loss(logp, logp_proximal, advantages, mask, clip_eps, tis_weights=w)
    kept = (w > 0).float() * (mask != 0)
    stats["behaviour_weight_mean"] = masked_mean(w, kept).item()
    stats["behaviour_dropped_frac"] = masked_mean(1.0 - kept, mask).item()
    return loss, stats


def _rowwise(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """Apply fn to one batch row at a time so float32 temporaries are [T, V], not [B, T, V]."""
    return torch.stack([fn(*row) for row in zip(*tensors, strict=True)])


def _row_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    picked = logits.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    # log_softmax(x)_i = x_i - logsumexp(x): no [T, V] log-prob copy is kept.
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position, [B, T] float32; logits [B, T, V], labels [B, T] int64."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not line up")
    return _rowwise(_row_token_logprobs, logits, labels.long())


def _row_entropy(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    log_p = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    # H = -sum_i p_i log p_i on normalised log-probs; the textbook logZ - sum_i p_i x_i cancels two large
    # numbers when logits are large (an fp32 error of 3e-2 at logits ~1e3).
    return -(torch.exp(log_p) * log_p).sum(dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, [B, T] float32 (logsumexp based, numerically stable)."""
    return _rowwise(_row_entropy, logits)


def compute_loss(
    algo: Algo,
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
    ref_logp: torch.Tensor | None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    tis_weights: torch.Tensor | None = None,
    logp_behaviour: torch.Tensor | None = None,
    behaviour_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss for one batch: PPO surrogate + KL loss term (grpo, rloo) - entropy bonus.

    With `logp_behaviour` the surrogate is decoupled PPO (`decoupled_policy_loss`, `logp_old` as the proximal
    policy) instead of plain PPO-clip.

    grpo (ReSearch) and rloo: add kl_coef * masked_mean(k3(logp, ref_logp)) when kl_coef > 0 and ref_logp is
    given.
    reinforce_pp (R1-Searcher): the KL is already inside the advantages as a per-token reward, so no loss
    term. All subtract entropy_coef * masked_mean(entropy) when entropy_coef > 0 and entropy is given.
    """
    if algo not in ("reinforce_pp", *_KL_LOSS_ALGOS):
        raise ValueError(f"unknown algo {algo!r}; expected 'reinforce_pp', 'grpo' or 'rloo'")
    if logp_behaviour is not None:
        loss, stats = decoupled_policy_loss(
            logp, logp_old, logp_behaviour, advantages, mask, clip_eps, behaviour_cap
        )
    else:
        loss, stats = policy_loss(logp, logp_old, advantages, mask, clip_eps, tis_weights)
    if ref_logp is not None:
        ref_logp = ref_logp.detach()
        if algo in _KL_LOSS_ALGOS and kl_coef > 0:
            kl = masked_mean(kl_penalty(logp, ref_logp, "k3"), mask)
            loss = loss + kl_coef * kl
            stats["kl_loss"] = kl.item()
        else:
            stats["ref_kl_k1"] = masked_mean(kl_penalty(logp.detach(), ref_logp, "k1"), mask).item()
    if entropy is not None:
        ent = masked_mean(entropy, mask)
        if entropy_coef > 0:
            loss = loss - entropy_coef * ent
        stats["entropy"] = ent.item()
    stats["loss"] = loss.item()
    return loss, stats
