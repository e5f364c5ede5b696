"""The console's time left during training (`searchrl up`, `searchrl demo`)."""

from __future__ import annotations

import pytest

from searchrl.launcher import eta_s


def test_eta_is_the_steps_to_go_at_the_mean_step_time_of_this_run():
    assert eta_s(step=2, first_step=1, elapsed_s=60.0, max_steps=10, max_minutes=None) == pytest.approx(240.0)
    # resumed at step 6: the restored steps took no time in this run
    assert eta_s(step=7, first_step=6, elapsed_s=40.0, max_steps=10, max_minutes=None) == pytest.approx(60.0)


def test_eta_is_capped_by_the_time_budget_and_never_negative():
    assert eta_s(step=1, first_step=1, elapsed_s=100.0, max_steps=100, max_minutes=5) == pytest.approx(200.0)
    assert eta_s(step=10, first_step=1, elapsed_s=400.0, max_steps=10, max_minutes=5) == 0.0
