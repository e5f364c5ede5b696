"""The trainer loop with the real DeepSpeed learner and real Redis: prompt feeding, group assembly, staleness,
dedup by ledger, reclaiming a dead consumer's entries, the commit transaction, checkpoints and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from searchrl.models import resolve_model
from searchrl.records import PromptTask, Trajectory
from searchrl.redisio import policy_version_key
from searchrl.weightsync import WeightStore
from searchrl_trainer.ledger import GROUP
from searchrl_trainer.loop import TrainerLoop
from tests.integration.trainer_kit import N, issued_tasks, make_cfg, traj


def test_loop_feeds_assembles_drops_dedups_commits_and_resumes(tiny_config, redis_client, learner_factory):
    r, rng = redis_client, np.random.default_rng(0)
    cfg = make_cfg(tiny_config)
    loop = TrainerLoop(cfg, learner_factory(cfg), r, WeightStore(1 << 20))
    loop.restore()
    assert r.get(policy_version_key("searchrl")) == b"0" and loop.store.current.version == 0

    # prompts: groups_per_step * (max_staleness + 1) outstanding
    assert loop.top_up_prompts() == 4 and r.xlen("prompts") == 4 and loop.top_up_prompts() == 0
    task = PromptTask.decode(r.xrange("prompts")[0][1])
    assert task.group_size == N and task.reward_preset == "r1s-stage1" and task.min_policy_version == 0
    a, b, c, d = issued_tasks(r)

    # a group left pending at another trainer consumer name is taken over; a duplicate sample, a task nobody
    # issued and a stale group are not trained
    r.xadd("trajectories", traj(a, 0, 0, 1.0, rng).encode())
    r.xadd("trajectories", traj(a, 1, 0, -1.0, rng).encode())
    r.xreadgroup(GROUP, "trainer-old", {"trajectories": ">"}, count=10)
    for t in (
        traj("never-issued", 0, 0, 1.0, rng),
        traj(b, 0, 0, 1.0, rng),
        traj(b, 1, 0, -1.0, rng),
        traj(b, 1, 0, 5.0, rng),  # a redone task's second copy of sample 1
    ):
        r.xadd("trajectories", t.encode())
    loop.state.step = loop.state.version = 2  # the policy moved on: version-0 groups are 2 steps behind
    c0, c1 = traj(c, 0, 1, 1.0, rng), traj(c, 1, 1, -1.0, rng)
    c0.logprobs[c0.loss_mask == 1] = -2.0  # 8 generated tokens at -log p 2; the step's other 24 at 0
    c0.metrics["search_failures"] = 1.0  # 1 of the step's 4 searches failed
    c1.finish_reason = "empty_query"  # an attempted search that was not valid
    r.xadd("trajectories", c0.encode())
    r.xadd("trajectories", c1.encode())
    r.xadd("trajectories", traj(d, 0, 2, 0.5, rng).encode())
    r.xadd("trajectories", traj(d, 1, 2, -0.5, rng).encode())

    before = {k: v.detach().clone() for k, v in loop.learner.engine.module.named_parameters()}
    m = loop.step(timeout_s=60)
    assert loop.state.dropped_groups == 2  # a and b were 2 steps behind (> max_staleness 1)
    assert m["step"] == 3 and m["policy_version"] == 3 and m["trajectories"] == 4
    assert m["staleness_mean"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert m["entropy_est"] == pytest.approx(2.0 * 8 / 32) and m["valid_query_rate"] == pytest.approx(3 / 5)
    # the dashboard's source: every numeric value of the step's metrics line is a Prometheus gauge
    gauges = {k: REGISTRY.get_sample_value("searchrl_trainer_step_metric", {"metric": k}) for k in m}
    assert {k: v for k, v in gauges.items() if v is not None} == {
        k: pytest.approx(v) for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    dashboards = Path(__file__).parents[2] / "deploy" / "helm" / "searchrl" / "dashboards"
    used = {k for f in dashboards.iterdir() for k in re.findall(r'metric=\\?"(\w+)', f.read_text())}
    assert used and used <= set(gauges), (
        f"the dashboard selects step metrics no step exports: {used - set(gauges)}"
    )
    # trained tasks left outstanding for uncommitted (save_every 1: the checkpoint acked and deleted them)
    assert set(loop.ledger.outstanding()) & {a, b, c, d} == set()
    assert r.xpending("trajectories", GROUP)["pending"] == 0 and r.xlen("trajectories") == 0
    assert r.get(policy_version_key("searchrl")) == b"3" and loop.store.current.version == 3
    changed = [k for k, v in loop.learner.engine.module.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "the optimizer step changed no parameter"
    events = [json.loads(x) for x in (Path(cfg.run.run_dir) / "events.jsonl").read_text().splitlines()]
    assert [e["tasks"] for e in events if e["ev"] == "train"] == [[c, d]]
    assert sorted(t for e in events if e["ev"] == "drop" for t in e["tasks"]) == sorted([a, b])
    assert r.xlen("searchrl:events") == 0  # mirrored to the run dir and trimmed at the checkpoint

    # resume: a fresh learner+loop restores step/version from the checkpoint and never reuses a version
    r.set(policy_version_key("searchrl"), 5)
    loop2 = TrainerLoop(cfg, learner_factory(cfg), r, WeightStore(1 << 20))
    loop2.restore()
    assert loop2.state.step == 3 and loop2.state.version == 6 and loop2.store.current.version == 6
    assert loop2.state.step_of(6) == 3  # the republished weights are step 3's: samples of v3 are on-policy
    restored = dict(loop2.learner.engine.module.named_parameters())
    assert all(torch.equal(v, restored[k]) for k, v in loop.learner.engine.module.named_parameters())


def test_learner_step_raises_likelihood_of_rewarded_sample(tiny_config, learner_factory):
    """One Reinforce++ step on a group with one good and one bad response moves log-probs the right way, and
    tokens under the document mask get no say."""
    cfg = make_cfg(tiny_config)
    cfg.trainer.groups_per_step = 1
    cfg.trainer.kl_coef = 0.0
    learner = learner_factory(cfg)
    rng = np.random.default_rng(1)
    good, bad = traj("g", 0, 0, 1.0, rng), traj("g", 1, 0, -1.0, rng)

    def seq_logprob(t: Trajectory) -> float:
        from searchrl_trainer.learner import collate

        b = collate([t], learner.pad_id)
        lp = learner._logprobs(learner.engine, b)
        return float((lp * b.mask).sum())

    g0, b0 = seq_logprob(good), seq_logprob(bad)
    stats = learner.train_step([good, bad])
    assert np.isfinite(stats["loss/loss"])
    assert seq_logprob(good) > g0 and seq_logprob(bad) < b0


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_export_gives_full_weights_under_every_zero_stage(tiny_config, learner_factory, zero_stage):
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tiny_config)
    cfg.trainer.zero_stage = zero_stage
    cfg.trainer.groups_per_step = 1
    learner = learner_factory(cfg)
    rng = np.random.default_rng(2)
    learner.train_step([traj("z", 0, 0, 1.0, rng), traj("z", 1, 0, -1.0, rng)])
    ref = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.path)).state_dict()
    exported = learner.state_dict_for_export()
    for name, t in ref.items():
        if name in learner.export_skip:
            continue
        assert exported[name].shape == t.shape, name
    assert any(not torch.equal(exported[n].float(), ref[n]) for n in ref if n not in learner.export_skip)
