"""The DeepSpeed learner: policy (+ frozen reference) model, one RL update per call, checkpoints, weight export.

Contract:
- `Learner(cfg, model_path)` initialises torch.distributed (gloo on CPU, NCCL on GPU; single process unless
  RANK/WORLD_SIZE say otherwise, as set by `dist.py`) and a DeepSpeed engine with a plain torch AdamW (no
  FusedAdam JIT build); with `trainer.lora_rank` the model is wrapped in LoRA adapters first (`lora.py`).
- Data parallel: every rank calls `train_step` with the WHOLE batch; the rows are dealt out by length, each rank
  trains its share, and advantages (group baselines, batch whitening) and token-mean weights are computed over
  the whole batch, so N ranks compute the update of one rank up to float summation order. Collective calls
  (`train_step`, `save`, `load`, a ZeRO-3 `state_dict_for_export`) must be made by every rank in the same order.
- `train_step(trajectories)` takes complete groups in order (group_size consecutive rows per prompt), computes
  advantages (`algos`), runs one pass of masked PPO-clip over micro-batches with one optimizer step at the end,
  and returns scalar stats. "Old" log-probs are the learner's own for the pre-update weights (as the seeds
  recompute them): taken from the training forward itself, or from a separate no-grad pass when the advantages
  need them first (Reinforce++ with a KL reward).
- A step that fails (an exception, or a non-finite loss or gradient norm) raises `StepFailed`: with
  `applied=False` nothing reached the weights (accumulated gradients are discarded); with `applied=True` the
  optimizer had already stepped and the caller must reload a checkpoint. The optimizer-step boundary is set per
  call, so batches of any size step exactly once. With several ranks only failures every rank sees alike (a
  non-finite loss on any rank, a non-finite gradient norm) become `StepFailed`; any other exception propagates:
  the ranks cannot agree to skip a step, so the service dies and resumes from its checkpoint.
- `state_dict_for_export()` returns full weights (gathered under ZeRO-3; LoRA adapters merged in) under the
  plain model's names, for publishing to rollout workers.
- `save(dir, tag, client_state)` / `load(dir)` wrap DeepSpeed checkpoints (model + optimizer + client state).
The learner knows nothing about Redis, gRPC or prompts.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from searchrl.config import TrainerConfig
from searchrl.records import Trajectory
from searchrl.redisio import free_port
from searchrl_trainer import algos, lora

log = logging.getLogger(__name__)


class StepFailed(RuntimeError):
    """An update that trained nothing; `applied` tells whether the weights were already changed."""

    def __init__(self, message: str, applied: bool) -> None:
        super().__init__(message)
        self.applied = applied


@dataclass
class Batch:
    """Left-padded prompts + right-padded responses: response token j of row i sits at column P + j."""

    input_ids: torch.Tensor  # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    position_ids: torch.Tensor  # [B, P+R]
    response_ids: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] float: 1 on generated tokens, 0 on documents and padding
    behaviour_logprobs: torch.Tensor  # [B, R]
    rewards: torch.Tensor  # [B]
    prompt_len: int

    def rows(self, idx: torch.Tensor) -> Batch:
        """Rows `idx` with the columns that are padding in every selected row cut off (the left of the prompts,
        the right of the responses), so a micro-batch of short rows costs only its own length."""
        att = self.attention_mask[idx]
        P = self.prompt_len
        cut = int((att[:, :P].sum(0) == 0).sum())  # prompts are left-padded: all-pad columns form a prefix
        r = max(int(att[:, P:].sum(1).max()), 1)
        cols = slice(cut, P + r)
        return Batch(
            self.input_ids[idx][:, cols],
            att[:, cols],
            self.position_ids[idx][:, cols],
            self.response_ids[idx][:, :r],
            self.mask[idx][:, :r],
            self.behaviour_logprobs[idx][:, :r],
            self.rewards[idx],
            P - cut,
        )

    def micro_batches(
        self, size: int, rows: torch.Tensor | None = None, group: int = 0
    ) -> list[torch.Tensor]:
        """Row indices (of `rows`, default all) in micro-batches of at most `size`, rows of similar total length
        together (less padding). With `group` > 1 a micro-batch never mixes groups (rows i // group): the rows
        of one prompt go together, for the shared-prefix forward."""
        rows = torch.arange(self.rewards.numel()) if rows is None else rows
        order = rows[torch.argsort(self.attention_mask[rows].sum(1), stable=True)]
        if group <= 1:
            return list(order.split(size))
        by_group: dict[int, list[int]] = {}
        for i in order.tolist():
            by_group.setdefault(i // group, []).append(i)
        return [part for g in sorted(by_group) for part in torch.tensor(by_group[g]).split(size)]

    def shares_prompt(self) -> bool:
        """Whether every row has the same (unpadded) prompt: then one forward of it serves them all."""
        P = self.prompt_len
        if P == 0 or self.rewards.numel() < 2:
            return False
        ids, att = self.input_ids[:, :P], self.attention_mask[:, :P]
        return bool((att == 1).all() and (ids == ids[:1]).all())

    def shard(self, rank: int, world_size: int) -> torch.Tensor:
        """The rows rank `rank` of `world_size` trains: dealt out in order of length, so every rank gets the
        same number of rows (the batch divides evenly) and a similar number of tokens."""
        return torch.argsort(self.attention_mask.sum(1), stable=True)[rank::world_size]


def collate(trajs: list[Trajectory], pad_id: int) -> Batch:
    P = max(len(t.prompt_ids) for t in trajs)
    R = max(max(len(t.response_ids) for t in trajs), 1)
    B = len(trajs)
    ids = np.full((B, P + R), pad_id, np.int64)
    att = np.zeros((B, P + R), np.int64)
    resp = np.full((B, R), pad_id, np.int64)
    mask = np.zeros((B, R), np.float32)
    blp = np.zeros((B, R), np.float32)
    for i, t in enumerate(trajs):
        p, r = len(t.prompt_ids), len(t.response_ids)
        ids[i, P - p : P] = t.prompt_ids
        ids[i, P : P + r] = t.response_ids
        att[i, P - p : P + r] = 1
        resp[i, :r] = t.response_ids
        mask[i, :r] = t.loss_mask
        blp[i, :r] = t.logprobs
    att_t = torch.from_numpy(att)
    pos = (att_t.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        torch.from_numpy(ids),
        att_t,
        pos,
        torch.from_numpy(resp),
        torch.from_numpy(mask),
        torch.from_numpy(blp),
        torch.tensor([t.reward for t in trajs], dtype=torch.float32),
        P,
    )


def response_logits(model: torch.nn.Module, b: Batch, device: str | torch.device) -> torch.Tensor:
    """Float logits predicting each response token, [B, R]: one forward of every row's prompt + response."""
    R = b.response_ids.shape[1]
    # logits at column c predict token c+1: response token j (column P+j) comes from column P+j-1. Only the
    # last R+1 columns go through the (vocabulary-wide) lm_head: prompts cost no logits memory.
    out = model(
        input_ids=b.input_ids.to(device),
        attention_mask=b.attention_mask.to(device),
        position_ids=b.position_ids.to(device),
        use_cache=False,
        logits_to_keep=R + 1,
    )
    return out.logits[:, :R].float()


def shared_prefix_logits(model: torch.nn.Module, b: Batch, device: str | torch.device) -> torch.Tensor:
    """`response_logits` of rows that share their prompt (`b.shares_prompt()`), with the prompt run once: its
    keys and values (kept in the autograd graph) are repeated for every row, and the rows run only their
    responses on top. The same function of the weights, so the same values and gradients up to float summation
    order; the prompt costs 1/B of its forward and backward."""
    P, R, B = b.prompt_len, b.response_ids.shape[1], b.rewards.numel()
    ids, att, pos = (t.to(device) for t in (b.input_ids, b.attention_mask, b.position_ids))
    pre = model(
        input_ids=ids[:1, :P],
        attention_mask=att[:1, :P],
        position_ids=pos[:1, :P],
        use_cache=True,
        logits_to_keep=1,
    )
    first = pre.logits[:, -1:].expand(B, 1, -1)  # predicts response token 0
    if R == 1:
        return first.float()
    cache = pre.past_key_values
    cache.batch_repeat_interleave(B)
    out = model(
        input_ids=ids[:, P : P + R - 1],
        attention_mask=att[:, : P + R - 1],
        position_ids=pos[:, P : P + R - 1],
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([first, out.logits], dim=1).float()


def init_distributed(backend: str, timeout_s: float = 1800.0) -> str:
    """Single-process defaults for torch.distributed env vars, then deepspeed.init_distributed."""
    from datetime import timedelta

    import deepspeed

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False)
    return backend


def freeze_below(model: torch.nn.Module, top_layers: int) -> None:
    """Leave only the top `top_layers` decoder layers and the final norm trainable (partial fine-tuning)."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"trainer.train_layers: {type(model).__name__} has no decoder `layers` to freeze")
    if top_layers > len(layers):
        raise ValueError(f"trainer.train_layers: {top_layers} > the model's {len(layers)} layers")
    model.requires_grad_(False)
    for layer in layers[len(layers) - top_layers :]:
        layer.requires_grad_(True)
    norm = getattr(decoder, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)


class Learner:
    def __init__(self, cfg: TrainerConfig, model_path: str, seed: int = 0) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.model_path = model_path
        self.backend = init_distributed(cfg.dist_backend, cfg.dist_timeout_s)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.device = torch.device(get_accelerator().device_name(int(os.environ.get("LOCAL_RANK", "0"))))
        torch.manual_seed(seed)
        if cfg.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        if cfg.train_layers:
            freeze_below(model, cfg.train_layers)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        if cfg.lora_rank:
            model = lora.wrap(model, cfg)
            if cfg.gradient_checkpointing:  # the frozen embeddings' output must carry grad into checkpoints
                model.enable_input_require_grads()
        self.ref = None
        if cfg.kl_coef > 0 and not cfg.lora_rank:  # with LoRA the reference is the base: adapters off
            self.ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(self.device)
            self.ref.eval().requires_grad_(False)
        rows = cfg.groups_per_step * cfg.group_size // self.world_size  # per rank (config checks it divides)
        self.micro = min(cfg.micro_batch_size, rows)
        self.gas = math.ceil(rows / self.micro)
        self._group = 0
        ds_config = {
            "train_micro_batch_size_per_gpu": self.micro,
            "gradient_accumulation_steps": self.gas,
            "train_batch_size": self.micro * self.gas * self.world_size,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.bf16},
            "steps_per_print": 1 << 30,
            "zero_allow_untested_optimizer": True,
        }
        optimizer = torch.optim.AdamW(
            [q for q in model.parameters() if q.requires_grad],
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            weight_decay=cfg.weight_decay,
        )
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.pad_id = int(getattr(model.config, "pad_token_id", None) or 0)
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])

    # ---- forward helpers ------------------------------------------------------------------------------------

    def _response_logits(self, model: torch.nn.Module, b: Batch) -> torch.Tensor:
        if self.cfg.shared_prefix and b.shares_prompt():
            return shared_prefix_logits(model, b, self.device)
        return response_logits(model, b, self.device)

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, b: Batch, own: torch.Tensor | None = None) -> torch.Tensor:
        """Response log-probs of the whole batch, [B, R]: each rank computes its rows `own` (default: its
        shard), a sum over the ranks fills in the rest (every row is some rank's)."""
        own = b.shard(self.rank, self.world_size) if own is None else own
        out = torch.zeros(b.response_ids.shape, dtype=torch.float32, device=self.device)
        for idx in b.micro_batches(self.micro, own, self._group):
            mb = b.rows(idx)
            lp = algos.token_logprobs(self._response_logits(model, mb), mb.response_ids.to(self.device))
            out[idx.to(self.device), : lp.shape[1]] = lp
        return self._sum(out)

    def _ref_logprobs(self, b: Batch, own: torch.Tensor) -> torch.Tensor | None:
        if self.ref is not None:
            return self._logprobs(self.ref, b, own)
        if self.cfg.lora_rank and self.cfg.kl_coef > 0:
            with lora.reference(self.engine.module):
                return self._logprobs(self.engine, b, own)
        return None

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(x)
        return x

    # ---- the update -----------------------------------------------------------------------------------------

    def train_step(self, trajs: list[Trajectory]) -> dict[str, float]:
        """One update; raises `StepFailed` instead of applying a failed or non-finite one."""
        try:
            stats = self._train_step(trajs)
        except StepFailed:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. an out-of-memory batch: the run must go on without it
            if self.world_size > 1:  # the other ranks are stuck in a collective: only a restart helps
                raise
            self.discard_gradients()
            raise StepFailed(f"{type(e).__name__}: {e}", applied=False) from e
        if not math.isfinite(stats["grad_norm"]):
            raise StepFailed(f"non-finite gradient norm {stats['grad_norm']}", applied=True)
        return stats

    def discard_gradients(self) -> None:
        """Drop gradients accumulated by an unfinished step (nothing was applied yet)."""
        self.engine.zero_grad()
        zero = getattr(self.engine.optimizer, "zero_grad", None)
        if zero is not None:
            zero(set_to_none=True)

    def _train_step(self, trajs: list[Trajectory]) -> dict[str, float]:
        cfg = self.cfg
        n = trajs[0].group_size
        self._group = n if cfg.shared_prefix else 0  # micro-batches keep a prompt's rows together
        if len(trajs) % self.world_size:
            raise StepFailed(f"{len(trajs)} rows do not split over {self.world_size} ranks", applied=False)
        b = collate(trajs, self.pad_id)
        own = b.shard(self.rank, self.world_size)
        mask = b.mask.to(self.device)
        behaviour = b.behaviour_logprobs.to(self.device)
        t0 = time.perf_counter()
        self.engine.eval()
        ref_logp = self._ref_logprobs(b, own)
        # One pass over the batch with the optimizer stepping only at its end (gradient accumulation), so the
        # learner's pre-update ("old") log-probs are exactly the training forward's own, detached. A separate
        # no-grad pass is needed only when the advantages depend on them (Reinforce++ with a KL reward).
        kl_reward = cfg.algo == "reinforce_pp" and ref_logp is not None and cfg.kl_coef > 0
        logp_old_all = self._logprobs(self.engine, b, own) if kl_reward else None
        rewards = b.rewards.to(self.device)
        adv = algos.advantages(cfg.algo, rewards, n, mask, logp_old_all, ref_logp, cfg.kl_coef)
        prep_s = time.perf_counter() - t0

        self.engine.train()
        total_tokens = max(mask.sum().item(), 1.0)  # of the whole batch: the loss is one token-mean over it
        sums: dict[str, float] = {"logprob_mismatch": 0.0}
        # one PPO epoch over the batch (R1-Searcher / ReSearch)
        parts = b.micro_batches(self.micro, own, self._group)
        for k, idx in enumerate(parts):
            mb = b.rows(idx)
            r = mb.response_ids.shape[1]
            idx = idx.to(self.device)
            mb_mask, mb_behaviour = mask[idx, :r], behaviour[idx, :r]
            logits = self._response_logits(self.engine, mb)
            logp = algos.token_logprobs(logits, mb.response_ids.to(self.device))
            logp_old = logp_old_all[idx, :r] if logp_old_all is not None else logp.detach()
            tis = algos.truncated_is_weights(logp_old, mb_behaviour, cfg.tis_cap) if cfg.tis_cap > 0 else None
            ent = algos.entropy_from_logits(logits) if cfg.entropy_coef > 0 else None
            loss, stats = algos.compute_loss(
                cfg.algo,
                logp,
                logp_old,
                adv[idx, :r],
                mb_mask,
                cfg.clip_eps,
                cfg.kl_coef,
                ref_logp[idx, :r] if ref_logp is not None else None,
                entropy=ent,
                entropy_coef=cfg.entropy_coef,
                tis_weights=tis,
                logp_behaviour=mb_behaviour if cfg.decoupled_ppo else None,
                behaviour_cap=cfg.behaviour_weight_cap,
            )
            stats["logprob_mismatch"] = algos.masked_mean((logp_old - mb_behaviour).abs(), mb_mask).item()
            # token-mean over the whole batch: weight each micro-batch by its token share; DeepSpeed divides
            # the accumulated gradient by gas and averages it over the ranks, hence the two factors.
            share = mb_mask.sum().item() / total_tokens
            if self._sum(torch.tensor(float(not torch.isfinite(loss)), device=self.device)).item():
                self.discard_gradients()  # on every rank alike: one rank's NaN fails the step everywhere
                raise StepFailed(f"non-finite loss in micro-batch {k}", applied=False)
            # the optimizer steps once, after the last micro-batch, whatever the batch size (finding 10)
            self.engine.set_gradient_accumulation_boundary(k == len(parts) - 1)
            self.engine.backward(loss * share * self.gas * self.world_size)
            self.engine.step()
            for name, v in stats.items():
                sums[name] = sums.get(name, 0.0) + v * share
        if self.world_size > 1:  # each rank summed its own rows' shares: add them up
            keys = sorted(sums)
            total = self._sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device))
            sums = dict(zip(keys, total.tolist(), strict=True))
        out = {f"loss/{k}": v for k, v in sums.items() if k != "logprob_mismatch"}
        out.update(
            {
                "logprob_mismatch": sums["logprob_mismatch"],
                "prep_s": prep_s,
                "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            }
        )
        return out

    # ---- export and checkpoints -----------------------------------------------------------------------------

    def state_dict_for_export(self) -> dict[str, torch.Tensor]:
        if self.cfg.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        return lora.merged_state_dict(state, lora.scale(self.cfg)) if self.cfg.lora_rank else state

    @property
    def export_skip(self) -> set[str]:
        """Tied lm_head is the embedding; vLLM ties it itself and safetensors refuses shared tensors."""
        return {"lm_head.weight"} if self.tied else set()

    def export_hf(self, directory: str) -> None:
        """The current policy as a plain HF folder (config, safetensors, tokenizer) that vLLM or HF can load."""
        from transformers import AutoTokenizer

        state = {k: v.detach().float().cpu() for k, v in self.state_dict_for_export().items()}
        model = self.engine.module.get_base_model() if self.cfg.lora_rank else self.engine.module
        model.save_pretrained(directory, state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.model_path).save_pretrained(directory)

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state)

    def load(self, directory: str) -> dict | None:
        if not os.path.isfile(os.path.join(directory, "latest")):
            return None
        _path, client_state = self.engine.load_checkpoint(directory)
        return client_state
