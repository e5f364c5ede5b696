"""The issue-11 trainer keys refuse contradictions, each error naming the key to change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from searchrl.config import TrainerConfig


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"world_size": 4, "nodes": 3}, r"world_size: 4 ranks do not split evenly over 3 nodes"),
        ({"world_size": 3, "group_size": 4, "groups_per_step": 2}, r"world_size: 8 rows per step"),
        ({"decoupled_ppo": True, "tis_cap": 2.0}, r"tis_cap: set it to 0 with decoupled_ppo"),
        ({"lora_rank": 8, "train_layers": 2}, r"train_layers: must be 0 with lora_rank"),
        ({"behaviour_weight_cap": 1.0}, r"behaviour_weight_cap"),
        ({"weight_sync": "rdma"}, r"weight_sync"),
    ],
)
def test_contradictions_name_the_key(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainerConfig(**fields)


def test_defaults_keep_one_rank_full_finetuning_and_grpc_sync() -> None:
    t = TrainerConfig()
    assert (t.world_size, t.nodes, t.lora_rank, t.decoupled_ppo, t.weight_sync) == (1, 1, 0, False, "grpc")
    assert TrainerConfig(world_size=8, nodes=2, group_size=16, groups_per_step=16).world_size == 8
