"""LoRA in the learner (services/trainer/lora.py) on the tiny model: a step trains only the adapters, and the
weights the trainer publishes (the existing weight-sync payload) are the merged base + (alpha / r) * B @ A, under
the plain model's names, so a rollout worker loads them as a full model."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load
from transformers import AutoModelForCausalLM

from searchrl.models import resolve_model
from searchrl.weightsync import serialize_state_dict
from tests.integration.trainer_kit import make_cfg, traj


def test_lora_step_trains_only_adapters_and_syncs_merged_weights(tiny_config, learner_factory):
    cfg = make_cfg(tiny_config)
    t = cfg.trainer
    t.lora_rank, t.lora_alpha, t.lr, t.kl_coef = (
        4,
        8.0,
        1e-2,
        1e-4,
    )  # the KL reward uses the base as reference
    learner = learner_factory(cfg)
    named = dict(learner.engine.module.named_parameters())
    trainable = {k for k, p in named.items() if p.requires_grad}
    assert trainable and all(".lora_" in k for k in trainable)
    before = {k: p.detach().clone() for k, p in named.items()}

    rng = np.random.default_rng(0)
    trajs = [
        traj(f"t{g}", i, 0, float(i), rng) for g in range(t.groups_per_step) for i in range(t.group_size)
    ]
    learner.train_step(trajs)
    changed = {k for k, p in named.items() if not torch.equal(p.detach(), before[k])}
    assert changed and changed <= trainable  # only adapters moved (B starts at 0, so it must have)
    assert any(".lora_B." in k for k in changed)

    state = learner.state_dict_for_export()
    plain = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.path), dtype=torch.float32)
    assert set(state) == set(plain.state_dict())  # the plain model's names, no adapter tensors
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    base = named[f"{prefix}.base_layer.weight"].detach()
    a, b = (
        named[f"{prefix}.lora_A.default.weight"].detach(),
        named[f"{prefix}.lora_B.default.weight"].detach(),
    )
    torch.testing.assert_close(state["model.layers.0.self_attn.q_proj.weight"], base + (8.0 / 4) * b @ a)

    # through the weight-sync payload into a plain model: the same outputs as the adapted one
    payload = serialize_state_dict(state, torch.float32, learner.export_skip)
    plain.load_state_dict(load(payload), strict=False)
    ids = torch.from_numpy(trajs[0].response_ids).long().unsqueeze(0)
    with torch.no_grad():
        want = learner.engine.module(input_ids=ids).logits
        got = plain.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
