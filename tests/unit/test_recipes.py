"""Every file in configs/ loads with `load_config`, and the GPU recipes carry the seeds' published
hyperparameters (the numbers below are the seeds' scripts', cited in each recipe's comments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchrl.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {
    "r1searcher-qwen2.5-7b-base.yaml",
    "r1searcher-llama3.1-8b-instruct.yaml",
    "research-qwen2.5-7b-instruct.yaml",
    "search-r1-qwen2.5-3b.yaml",
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path: Path) -> None:
    load_config(path)


def test_recipes_exist_and_cite_their_seed_files() -> None:
    for name in RECIPES:
        text = (CONFIGS / name).read_text()
        assert "Sources (" in text and "@ " in text, f"{name}: cite the seed files and commit"


def _recipe(name: str):
    return load_config(CONFIGS / name)


def test_research_recipe() -> None:
    c = _recipe("research-qwen2.5-7b-instruct.yaml")
    t = c.trainer
    assert (t.algo, t.group_size, t.lr, t.kl_coef, t.entropy_coef, t.clip_eps) == (
        "grpo",
        5,
        1e-6,
        1e-3,
        1e-3,
        0.2,
    )
    assert c.rollout.protocol == "research" and c.model.chat_template is True
    assert [s.reward_preset for s in t.stages] == ["research"]


def test_search_r1_recipe() -> None:
    c = _recipe("search-r1-qwen2.5-3b.yaml")
    t = c.trainer
    assert (t.algo, t.group_size, t.lr, t.kl_coef) == ("grpo", 5, 1e-6, 1e-3)
    assert (c.rollout.protocol, c.rollout.max_turns, c.rollout.top_p) == ("search-r1", 2, 0.95)
    assert [s.reward_preset for s in t.stages] == ["search-r1-em"]


def test_r1searcher_recipes() -> None:
    q = _recipe("r1searcher-qwen2.5-7b-base.yaml")
    assert (q.trainer.algo, q.trainer.group_size, q.trainer.lr, q.trainer.kl_coef) == (
        "reinforce_pp",
        16,
        2e-6,
        0.0,
    )
    assert q.model.chat_template is False
    assert (q.reward.r1s_stage2_checks, q.reward.r1s_format_penalty) == ("qwen", -2.0)
    assert [s.reward_preset for s in q.trainer.stages] == ["r1s-stage2"]
    ll = _recipe("r1searcher-llama3.1-8b-instruct.yaml")
    assert (ll.trainer.algo, ll.trainer.group_size, ll.trainer.kl_coef) == ("reinforce_pp", 16, 1e-4)
    assert (ll.reward.r1s_stage2_checks, ll.reward.r1s_format_penalty) == ("llama", -1.0)
    assert [s.reward_preset for s in ll.trainer.stages] == ["r1s-stage1", "r1s-stage2"]
    for c in (q, ll):
        assert c.rollout.protocol == "r1searcher" and c.trainer.betas == (0.9, 0.95)
