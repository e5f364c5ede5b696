"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from searchrl.models import resolve_model
from searchrl_trainer.learner import Learner


@pytest.fixture(scope="module")
def learner_factory():
    made = []

    def make(cfg):
        made.append(Learner(cfg.trainer, resolve_model(cfg.model.path), cfg.run.seed))
        return made[-1]

    return make
