"""LoRA for the learner (peft): adapters are trained, rollout workers get merged full weights.

Contract:
- `wrap(model, cfg)` returns the model with LoRA adapters of rank `trainer.lora_rank` on the linear layers named
  in `trainer.lora_target_modules`; only the adapters are trainable. The frozen base doubles as the reference
  policy (`reference(model)` switches the adapters off), so LoRA needs no second copy of the model.
- `merged_state_dict(state, scale)` is a pure function on a state dict of the wrapped model (as DeepSpeed hands
  it out, ZeRO-3 gathered or not): every adapted weight becomes W + scale * B @ A, adapter tensors are left out
  and names are the plain model's, so the existing weight-sync payload and HF export load as a full model.
  Rollout engines therefore need no LoRA support.
"""

from __future__ import annotations

import contextlib

import torch

from searchrl.config import TrainerConfig

_PEFT_PREFIX = "base_model.model."
_ADAPTER = "default"


def wrap(model: torch.nn.Module, cfg: TrainerConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        bias="none",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # e.g. no module matches
        raise ValueError(f"trainer.lora_target_modules: {e}") from e


def scale(cfg: TrainerConfig) -> float:
    return cfg.lora_alpha / cfg.lora_rank


def reference(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Context in which `model` (wrapped) computes with its adapters off: the base model's log-probs."""
    return model.disable_adapter()


def merged_state_dict(state: dict[str, torch.Tensor], lora_scale: float) -> dict[str, torch.Tensor]:
    """The wrapped model's `state` as plain-model weights with the adapters merged in (see the docstring)."""
    a_suffix, b_suffix = f".lora_A.{_ADAPTER}.weight", f".lora_B.{_ADAPTER}.weight"
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        plain = name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
        if name.endswith(".base_layer.weight"):
            layer = name.removesuffix(".base_layer.weight")
            a, b = state[layer + a_suffix].float(), state[layer + b_suffix].float()
            tensor = (tensor.float() + lora_scale * (b @ a)).to(tensor.dtype)
        out[plain] = tensor
    return out
