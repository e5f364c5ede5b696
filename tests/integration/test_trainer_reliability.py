"""The trainer's queue promises under the failures of the reliability review (findings 1, 2, 3, 9, 10), on the
real DeepSpeed learner and a real redis-server. Each test tries to break one promise."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from searchrl.audit import collect
from searchrl.redisio import connect, failed_key
from searchrl.weightsync import WeightStore
from searchrl_trainer.learner import StepFailed
from searchrl_trainer.ledger import GROUP
from searchrl_trainer.loop import TrainerLoop
from tests.integration.trainer_kit import issued_tasks, make_cfg, traj


@pytest.fixture(scope="module")
def learner(learner_factory, tmp_path_factory):
    from tests.conftest import tiny_config_at

    return learner_factory(make_cfg(tiny_config_at(tmp_path_factory.mktemp("learner"))))


def new_loop(cfg, r, learner) -> TrainerLoop:
    loop = TrainerLoop(cfg, learner, r, WeightStore(1 << 20))
    loop.restore()
    return loop


def feed(r, task: str, version: int, rng, rewards=(1.0, -1.0)) -> None:
    for i, reward in enumerate(rewards):
        r.xadd("trajectories", traj(task, i, version, reward, rng).encode())


def events(cfg, r) -> list[dict]:
    path = Path(cfg.run.run_dir) / "events.jsonl"
    on_disk = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return on_disk + [json.loads(f[b"e"]) for _, f in r.xrange("searchrl:events")]


def params(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.engine.module.named_parameters()}


def test_buffered_entries_are_never_reclaimed_acked_or_trained_twice(tiny_config, redis_client, learner):
    """Finding 1: entries the trainer holds idle past claim_idle_ms (200 ms here) while it waits for more groups
    must not come back as a second copy of the group, and a partial group must not be acked."""
    r, rng = redis_client, np.random.default_rng(0)
    cfg = make_cfg(tiny_config)
    loop = new_loop(cfg, r, learner)
    loop.top_up_prompts()
    a, b, *_ = issued_tasks(r)
    feed(r, a, 0, rng)  # one complete group
    r.xadd("trajectories", traj(b, 0, 0, 1.0, rng).encode())  # half of another
    with pytest.raises(TimeoutError):
        loop.gather(2, timeout_s=2)  # today: returns [a, a'] after ~0.3 s
    assert loop.ready == [a]
    assert r.xpending("trajectories", GROUP)["pending"] == 3  # nothing acked before training


def test_stop_during_gather_checkpoints_and_resume_keeps_every_step(tiny_config, redis_client, learner):
    """Finding 2: a stop request (SIGTERM) that lands in gather, with save_every far away, must not lose the
    steps trained since the last checkpoint."""
    r, rng = redis_client, np.random.default_rng(1)
    cfg = make_cfg(tiny_config)
    cfg.trainer.save_every, cfg.trainer.max_steps, cfg.trainer.max_staleness = 50, 10, 0
    loop = new_loop(cfg, r, learner)
    for _ in range(3):
        loop.top_up_prompts()
        for t in list(loop.out):
            feed(r, t, loop.state.version, rng)
        loop.step(timeout_s=60)
    loop.run(stop_requested=lambda: loop.waiting_s() > 0.5)  # stops inside the 4th gather
    assert loop.state.step == 3 and not loop.state.done
    again = new_loop(cfg, r, learner)
    assert again.state.step == 3 and again.saved_step == 3
    assert r.hlen("searchrl:uncommitted") == 0 and r.xlen("trajectories") == 0


def test_crash_between_checkpoints_rolls_back_and_trains_those_groups_again(
    tiny_config, redis_client, learner
):
    """Finding 2, the hard crash: the steps after the last checkpoint are not in the restored weights, so their
    groups must be trained again (not silently skipped as 'already in the ledger')."""
    r, rng = redis_client, np.random.default_rng(2)
    cfg = make_cfg(tiny_config)
    cfg.trainer.save_every, cfg.trainer.max_staleness = 2, 0
    loop = new_loop(cfg, r, learner)
    trained = []
    for _ in range(3):
        loop.top_up_prompts()
        for t in list(loop.out):
            feed(r, t, loop.state.version, rng)
        trained.append(sorted(loop.out))
        loop.step(timeout_s=60)
    assert loop.saved_step == 2 and r.xlen("trajectories") == 4  # step 3's entries wait for a checkpoint
    (Path(cfg.run.run_dir) / "metrics.jsonl").write_text("".join(f'{{"step": {i}}}\n' for i in (1, 2, 3)))
    # SIGKILL: the loop object is simply abandoned; a new trainer (same consumer name) restores
    again = new_loop(cfg, r, learner)
    assert again.state.step == 2
    assert sorted(again.ledger.outstanding()) == trained[2]  # rolled back to outstanding
    assert (Path(cfg.run.run_dir) / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    m = again.step(timeout_s=60)
    assert m["step"] == 3 and r.xlen("trajectories") == 4
    log = events(cfg, r)
    lineage: dict[int, list[str]] = {}
    for e in log:
        if e["ev"] == "train":
            lineage[e["step"]] = e["tasks"]
        elif e["ev"] == "restore":
            lineage = {s: t for s, t in lineage.items() if s <= e["step"]}
    assert sorted(t for ts in lineage.values() for t in ts) == sorted(t for ts in trained for t in ts)
    rep = collect(Path(cfg.run.run_dir), cfg, r)  # what `searchrl audit` reports
    assert rep.ok and rep.trained == 6 and rep.rolled_back_steps == 1 and rep.committed_step == 3
    assert rep.checkpoint_step == 2 and rep.uncheckpointed == 2  # step 3's tasks wait for a checkpoint


def test_tasks_that_cannot_complete_free_their_slots(tiny_config, redis_client, learner):
    """Finding 3: a malformed sample, a task a worker dead-lettered, or a group that never arrives must not
    keep its slot in :outstanding forever (the run would stall with green health)."""
    r, rng = redis_client, np.random.default_rng(3)
    cfg = make_cfg(tiny_config)
    loop = new_loop(cfg, r, learner)
    assert loop.top_up_prompts() == 4
    a, b, c, d = issued_tasks(r)
    r.xadd("trajectories", traj(a, 0, 0, 1.0, rng).encode())
    bad = traj(a, 1, 0, 1.0, rng).encode()
    bad["loss_mask"] = b"\x01"  # one mask byte for a 12-token response
    r.xadd("trajectories", bad)
    r.hset(failed_key("searchrl"), b, "group_size: must be an integer")
    with pytest.raises(TimeoutError):
        loop.gather(1, timeout_s=1)
    assert loop.top_up_prompts() == 0  # the gather's own top-up already replaced a and b
    assert {c, d} < set(loop.out) and not {a, b} & set(loop.out) and len(loop.out) == 4
    assert r.xlen("trajectories:dead") == 1 and r.xpending("trajectories", GROUP)["pending"] == 0
    cfg.trainer.task_timeout_s = 0.5  # now nothing arrives at all
    time.sleep(0.6)
    assert loop.top_up_prompts() == 4 and not {c, d} & set(loop.out)
    reasons = [e["reason"].split(":")[0] for e in events(cfg, r) if e["ev"] == "drop"]
    assert sorted(reasons) == ["dead-lettered", "expired", "expired", "expired", "expired", "malformed"]


def test_poison_trajectories_are_dead_lettered_and_never_reach_the_learner(
    tiny_config, redis_client, learner
):
    """Finding 10: a NaN reward or an out-of-vocabulary token id must not crash-loop the trainer or reach the
    weights; the poisoned groups are dropped and counted, the rest trains."""
    r, rng = redis_client, np.random.default_rng(4)
    cfg = make_cfg(tiny_config)
    loop = new_loop(cfg, r, learner)
    loop.top_up_prompts()
    a, b, c, d = issued_tasks(r)
    nan = traj(a, 0, 0, float("nan"), rng).encode()  # json.dumps writes NaN, json.loads accepts it
    r.xadd("trajectories", nan)
    far = traj(b, 0, 0, 1.0, rng)
    far.response_ids[3] = 10**9
    r.xadd("trajectories", far.encode())
    feed(r, c, 0, rng)
    feed(r, d, 0, rng)
    m = loop.step(timeout_s=60)
    assert m["trajectories"] == 4 and np.isfinite(m["reward_mean"]) and np.isfinite(m["loss/loss"])
    assert {a, b}.isdisjoint(loop.out) and r.xlen("trajectories:dead") == 2
    errors = sorted(f[b"error"].decode().split(":")[1].strip() for _, f in r.xrange("trajectories:dead"))
    assert errors == ["meta.reward", "response_ids"]


def test_failed_or_non_finite_step_trains_nothing(tiny_config, learner):
    """Finding 10: a non-finite loss is not applied (weights unchanged, no optimizer step), and a batch of any
    size steps the optimizer exactly once."""
    rng = np.random.default_rng(5)
    bad = [traj("x", 0, 0, float("nan"), rng), traj("x", 1, 0, 1.0, rng)]
    before, steps = params(learner), learner.engine.global_steps
    with pytest.raises(StepFailed) as info:
        learner.train_step(bad)
    assert not info.value.applied and learner.engine.global_steps == steps
    assert all(torch.equal(v, before[k]) for k, v in params(learner).items())
    three_groups = [traj(t, i, 0, float(i), rng) for t in "abc" for i in range(2)]  # config says 2 groups
    stats = learner.train_step(three_groups)
    assert learner.engine.global_steps == steps + 1 and np.isfinite(stats["grad_norm"])


def test_redis_connection_drop_mid_run_is_ridden_out(tiny_config, redis_client, redis_server, learner):
    """Finding 2: a Redis blip (connection killed, as on a restart or failover) must not kill the trainer."""
    rng = np.random.default_rng(6)
    cfg = make_cfg(tiny_config)
    r = connect(redis_server.url)
    loop = new_loop(cfg, r, learner)
    loop.top_up_prompts()
    for t in list(loop.out)[:2]:
        feed(redis_client, t, 0, rng)
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    m = loop.step(timeout_s=60)
    assert m["step"] == 1
    with pytest.raises(redis.ConnectionError):
        connect("redis://127.0.0.1:1/0", retries=1).ping()


def test_a_stalled_wait_is_logged_exported_and_reported(tiny_config, redis_client, learner, caplog):
    """Finding 3 / L13: a trainer stuck waiting for groups must say so (log, gauge, GetStatus), not look healthy."""
    from prometheus_client import REGISTRY

    from searchrl.proto import trainer_pb2
    from searchrl_trainer.server import TrainerServicer

    cfg = make_cfg(tiny_config)
    loop = new_loop(cfg, redis_client, learner)
    status = TrainerServicer(loop, loop.store).GetStatus(trainer_pb2.TrainerStatusRequest(), None)
    assert not status.stalled and status.waiting_s == 0 and status.groups_needed == 2
    loop.wait.since = time.monotonic() - 90  # a wait that began 90 s ago (the floor is 60 s)
    loop.top_up_prompts()
    loop._check_stall(2)
    status = TrainerServicer(loop, loop.store).GetStatus(trainer_pb2.TrainerStatusRequest(), None)
    assert (
        status.stalled
        and status.waiting_s >= 90
        and status.outstanding_tasks == 4
        and status.groups_ready == 0
    )
    assert REGISTRY.get_sample_value("searchrl_trainer_stalled") == 1
    assert any("stalled: waiting for groups 0/2 " in r.message for r in caplog.records)


def test_an_update_that_reached_the_weights_is_rolled_back_to_the_checkpoint(
    tiny_config, redis_client, learner, monkeypatch
):
    """Finding 10: when a failed update was already applied (e.g. a non-finite gradient norm after the optimizer
    step), the weights go back to the last checkpoint, the step's groups are dropped, and a new version is
    announced for the restored weights."""
    r, rng = redis_client, np.random.default_rng(7)
    cfg = make_cfg(tiny_config)
    cfg.trainer.max_staleness = 0
    loop = new_loop(cfg, r, learner)
    loop.top_up_prompts()
    for t in list(loop.out):
        feed(r, t, 0, rng)
    loop.step(timeout_s=60)  # save_every 1: checkpoint of step 1
    good = params(learner)

    def poisoned_step(trajs):  # the fault: DeepSpeed applied an update with a NaN gradient
        with torch.no_grad():
            next(learner.engine.module.parameters()).fill_(float("nan"))
        raise StepFailed("non-finite gradient norm nan", applied=True)

    monkeypatch.setattr(learner, "train_step", poisoned_step)
    loop.top_up_prompts()
    doomed = sorted(loop.out)
    for t in doomed:
        feed(r, t, loop.state.version, rng)
    assert loop.step(timeout_s=60) is None
    monkeypatch.undo()
    assert all(torch.equal(v, good[k]) for k, v in params(learner).items())
    assert loop.state.step == 1 and loop.state.version == 2 and loop.store.current.version == 2  # v1 was seen
    drops = [e for e in events(cfg, r) if e["ev"] == "drop"]
    assert sorted(t for e in drops for t in e["tasks"]) == doomed
    assert all(e["reason"].startswith("train_failed") for e in drops)
