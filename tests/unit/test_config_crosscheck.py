"""Cross-field config checks (review L3): a config whose sections contradict each other fails at load time with
an error naming the dotted keys and the file, instead of stalling the run later. Every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from searchrl.config import ConfigError, load_config
from searchrl.grpcutil import MAX_MESSAGE_BYTES
from tests.conftest import ROOT

SHIPPED = [
    *sorted((ROOT / "configs").glob("*.yaml")),
    *sorted((ROOT / "deploy" / "compose").glob("*.yaml")),
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_load(path: Path) -> None:
    load_config(path)


def test_helm_values_config_loads(tmp_path: Path) -> None:
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "searchrl" / "values.yaml").read_text())
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(values["config"]))
    load_config(f)


def _error(tmp_path: Path, tree: dict) -> str:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    return str(e.value)


@pytest.mark.parametrize(
    ("tree", "key", "also"),
    [
        ({"rollout": {"top_k": 6}, "retriever": {"max_top_k": 5}}, "rollout.top_k", "retriever.max_top_k"),
        (
            {"rollout": {"tasks_per_batch": 3}, "trainer": {"group_size": 4}, "reward": {"max_batch": 11}},
            "rollout.tasks_per_batch",
            "reward.max_batch",
        ),
        (
            {"rollout": {"max_prompt_tokens": 600, "max_response_tokens": 500, "max_model_len": 1099}},
            "rollout.max_prompt_tokens",
            "rollout.max_model_len",
        ),
        ({"trainer": {"weight_chunk_bytes": MAX_MESSAGE_BYTES}}, "trainer.weight_chunk_bytes", "64 MiB"),
        ({"streams": {"prompts": "s", "trajectories": "s"}}, "streams.trajectories", "streams.prompts"),
        ({"reward": {"port": 99999}}, "reward.port", "[1, 65535]"),
        ({"reward": {"port": 0}}, "reward.port", "[1, 65535]"),
        ({"retriever": {"metrics_port": 70000}}, "retriever.metrics_port", "0 = off"),
        ({"trainer": {"port": 9000, "metrics_port": 9000}}, "trainer.metrics_port", "trainer.port"),
        ({"trainer": {"stages": [{"steps": 1}, {}]}}, "trainer.stages.1.name", "'stage1'"),
    ],
)
def test_contradiction_names_keys_and_file(tmp_path: Path, tree: dict, key: str, also: str) -> None:
    message = _error(tmp_path, tree)
    assert f"bad.yaml: {key}: " in message and also in message, message
    assert len(message.splitlines()) == 1, message


def test_all_contradictions_are_reported_at_once(tmp_path: Path) -> None:
    message = _error(tmp_path, {"rollout": {"top_k": 99}, "streams": {"prompts": "x", "trajectories": "x"}})
    assert "rollout.top_k" in message and "streams.trajectories" in message


def test_overrides_are_checked_too() -> None:
    with pytest.raises(
        ConfigError, match=r"--set rollout.top_k=51\): rollout\.top_k: .*retriever\.max_top_k"
    ):
        load_config(None, ["rollout.top_k=51"])


def test_what_stays_allowed() -> None:
    cfg = load_config(
        None,
        [
            # Workers split Search calls at retriever.max_batch, so a larger batch is fine.
            "rollout.tasks_per_batch=8",
            "trainer.group_size=16",
            "retriever.max_batch=4",
            # Limits met exactly, metrics off.
            "rollout.top_k=50",
            "rollout.max_prompt_tokens=1024",
            "rollout.max_response_tokens=3072",
            "rollout.max_model_len=4096",
            "reward.metrics_port=0",
            "trainer.port=65535",
        ],
    )
    assert cfg.reward.metrics_port == 0 and cfg.rollout.top_k == 50
