"""The trainer loop with the real DeepSpeed learner and real Redis: prompt feeding, group assembly, staleness,
dedup by ledger, reclaiming a dead consumer's entries, the commit transaction, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchrl.models import resolve_model
from searchrl.records import PromptTask, Trajectory
from searchrl.redisio import ledger_key, policy_version_key
from searchrl.weightsync import WeightStore
from searchrl_trainer.learner import Learner
from searchrl_trainer.loop import GROUP, TrainerLoop

N = 2  # group size


@pytest.fixture(scope="module")
def learner_factory():
    made = []

    def make(cfg):
        made.append(Learner(cfg.trainer, resolve_model(cfg.model.path), cfg.run.seed))
        return made[-1]

    return make


def make_cfg(tiny_config):
    cfg = tiny_config
    cfg.trainer.group_size = N
    cfg.trainer.groups_per_step = 2
    cfg.trainer.micro_batch_size = 2
    cfg.trainer.max_staleness = 1
    cfg.trainer.save_every = 1
    cfg.trainer.lr = 1e-3
    cfg.streams.claim_idle_ms = 200
    return cfg


def traj(task: str, i: int, version: int, reward: float, rng: np.random.Generator) -> Trajectory:
    resp = rng.integers(100, 1000, size=12).astype(np.int32)
    mask = np.ones(12, np.uint8)
    mask[4:8] = 0  # an inserted document
    return Trajectory(
        f"{task}/{i}",
        task,
        i,
        N,
        version,
        rng.integers(100, 1000, size=6).astype(np.int32),
        resp,
        mask,
        np.zeros(12, np.float32),
        reward,
        {"num_searches": 1.0},
    )


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

    # a group left pending at a dead trainer consumer is reclaimed; a duplicate and a stale group are not trained
    r.xadd("trajectories", traj("dead", 0, 0, 1.0, rng).encode())
    r.xadd("trajectories", traj("dead", 1, 0, -1.0, rng).encode())
    r.xreadgroup(GROUP, "trainer-old", {"trajectories": ">"}, count=10)
    r.sadd(ledger_key("searchrl"), "done/0")
    for t in (
        traj("done", 0, 0, 1.0, rng),
        traj("a", 0, 0, 1.0, rng),
        traj("a", 1, 0, -1.0, rng),
        traj("a", 1, 0, 5.0, rng),
    ):
        r.xadd("trajectories", t.encode())
    loop.state.version = (
        2  # pretend the policy moved on: version-0 groups are now 2 behind (> max_staleness 1)
    )
    r.xadd("trajectories", traj("fresh", 0, 1, 1.0, rng).encode())
    r.xadd("trajectories", traj("fresh", 1, 1, -1.0, rng).encode())
    r.xadd("trajectories", traj("fresh2", 0, 2, 0.5, rng).encode())
    r.xadd("trajectories", traj("fresh2", 1, 2, -0.5, rng).encode())
    import time

    time.sleep(0.3)
    before = {k: v.detach().clone() for k, v in loop.learner.engine.module.named_parameters()}
    m = loop.step(timeout_s=60)
    assert loop.state.dropped_groups == 2  # "dead" and "a" were 2 versions behind
    assert m["step"] == 1 and m["policy_version"] == 3 and m["trajectories"] == 4
    assert m["staleness_mean"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert r.smembers(ledger_key("searchrl")) == {b"done/0", b"fresh/0", b"fresh/1", b"fresh2/0", b"fresh2/1"}
    assert r.xpending("trajectories", GROUP)["pending"] == 0
    assert r.get(policy_version_key("searchrl")) == b"3" and loop.store.current.version == 3
    changed = [k for k, v in loop.learner.engine.module.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "the optimizer step changed no parameter"

    # resume: a fresh learner+loop restores step/version from the checkpoint and never reuses a version
    r.set(policy_version_key("searchrl"), 5)
    loop2 = TrainerLoop(cfg, learner_factory(cfg), r, WeightStore(1 << 20))
    loop2.restore()
    assert loop2.state.step == 1 and loop2.state.version == 6 and loop2.store.current.version == 6
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
