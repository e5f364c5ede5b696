"""Every Redis record gets >= 1,000 generated bad stream entries (tests/fuzz/record_maps.py):

- `PromptTask.decode` and `Trajectory.decode`, called directly: a record or a `ValueError` naming the field,
  nothing else; a record they accept keeps the contract (types, ranges, finite numbers, matching lengths).
- the rollout worker's intake: bad tasks XADDed to the prompts stream while a real worker loop (`run_forever`,
  scripted engine, real tokenizer, reward and trainer servers) runs: every task that does not decode is
  dead-lettered, every task is resolved (done or dead-lettered) before the deadline, nothing stays pending, the
  loop never dies, the good task after them completes, and what it writes the trainer can decode.
- the trainer's admission: bad trajectories of outstanding tasks XADDed and gathered by a real TrainerLoop on the
  tiny model: no exception but the gather's TimeoutError, every malformed entry acked and dead-lettered, every
  pending entry held for a group, the slots of dropped tasks refilled, and training goes on.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time

import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from searchrl.records import MAX_GROUP_SIZE, MAX_QUESTION_CHARS, MAX_TASK_ID_CHARS, PromptTask, Trajectory
from searchrl.weightsync import WeightStore
from searchrl_trainer.ledger import DEAD_SUFFIX, GROUP
from searchrl_trainer.loop import TrainerLoop
from tests.fuzz.kit import make_worker
from tests.fuzz.record_maps import (
    MARK,
    PROMPT_HOSTILE,
    Fields,
    entry,
    json_or,
    prompt_entries,
    prompt_task_base,
    seeds,
    trajectory_base,
    trajectory_hostile,
)
from tests.fuzz.strategies import SETTINGS, mostly
from tests.integration.trainer_kit import N, traj

pytestmark = pytest.mark.fuzz

# The intake paths keep state across examples (a poison entry stays pending): a failure is reported as found,
# not shrunk (a shrink step would replay it against the changed state, and a hang costs RESOLVE_S each time).
STATEFUL = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])
VOCAB, MAX_TOKENS = 1000, 64  # of the direct Trajectory.decode calls
DECODER, PATH = "Redis record: decoder", "Redis record: through the service"
RESOLVE_S = 30.0  # an intake example not resolved by then is a hang
TASK, VERSION = "@task-placeholder@", 987654321  # what trainer-admission entries are drawn for
_TRAJ_ERROR = re.compile(r"(meta[.:]|stream entry|fields:|prompt_ids|response_ids|loss_mask|logprobs)")


def check_task(t: PromptTask) -> None:
    assert type(t.task_id) is str and 0 < len(t.task_id) <= MAX_TASK_ID_CHARS
    assert type(t.question) is str and 0 < len(t.question) <= MAX_QUESTION_CHARS
    assert type(t.golden_answers) is list and t.golden_answers
    assert all(type(a) is str for a in t.golden_answers)
    assert type(t.group_size) is int and 1 <= t.group_size <= MAX_GROUP_SIZE
    assert type(t.reward_preset) is str and t.reward_preset
    assert type(t.min_policy_version) is int and t.min_policy_version >= 0 and type(t.stage) is str


def check_trajectory(t: Trajectory, vocab: int, max_tokens: int) -> None:
    assert type(t.task_id) is str and t.task_id and t.traj_id == f"{t.task_id}/{t.sample_index}"
    assert all(type(x) is int for x in (t.sample_index, t.group_size, t.policy_version))
    assert 0 <= t.sample_index < t.group_size and t.policy_version >= 0
    assert type(t.reward) is float and math.isfinite(t.reward)
    assert all(type(k) is str and math.isfinite(v) for k, v in t.metrics.items())
    n = len(t.response_ids)
    assert len(t.loss_mask) == n == len(t.logprobs) and 0 < len(t.prompt_ids) <= max_tokens - n
    for ids in (t.prompt_ids, t.response_ids):
        assert ids.dtype == np.int32 and ((ids >= 0) & (ids < vocab)).all()
    assert t.loss_mask.dtype == np.uint8 and set(t.loss_mask.tolist()) <= {0, 1}
    assert t.logprobs.dtype == np.float32 and np.isfinite(t.logprobs).all()


def decodes_task(fields: dict) -> PromptTask | None:
    try:
        return PromptTask.decode(fields)
    except ValueError as e:
        assert str(e).startswith("malformed prompt task: ") and "meta" in str(e), str(e)
        return None


def decodes_trajectory(fields: dict, vocab: int, max_tokens: int) -> Trajectory | None:
    try:
        return Trajectory.decode(fields, vocab, max_tokens)
    except ValueError as e:
        assert _TRAJ_ERROR.match(str(e)), str(e)
        return None


def run_with_seeds(check, strategy: st.SearchStrategy, corpus: list[dict]) -> None:  # noqa: ANN001
    """`check` on 1,000 generated inputs, after the seed corpus (Hypothesis explicit examples)."""
    fuzz = given(strategy)(check)
    for fields in corpus:
        fuzz = example(fields)(fuzz)
    settings(SETTINGS, max_examples=1000)(fuzz)()


PROMPT_SEEDS = seeds(prompt_task_base("t"))
TRAJECTORY_SEEDS = seeds(trajectory_base(traj("t", 0, 0, 0.0, np.random.default_rng(0)).encode()))


def test_prompt_task_decode(tally) -> None:
    def check(fields: dict) -> None:
        with tally.count(DECODER, "PromptTask.decode") as out:
            task = decodes_task(fields)
            if task is not None:
                check_task(task)
            out.name = "ValueError" if task is None else "accepted"

    run_with_seeds(check, prompt_entries(), PROMPT_SEEDS)
    assert tally.inputs("PromptTask.decode") >= 1000


def _trajectory_entries(tasks: list[str], version: int, vocab: int) -> st.SearchStrategy[dict]:
    """Bad entries from a valid trajectory of one of `tasks`, and now and then one of the seed corpus."""
    hostile = trajectory_hostile(vocab)

    @st.composite
    def one(draw: st.DrawFn) -> dict:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        task, i = draw(st.sampled_from(tasks)), draw(st.integers(0, N - 1))
        return draw(entry(trajectory_base(traj(task, i, version, float(i), rng).encode()), hostile))

    return mostly(one(), st.sampled_from(TRAJECTORY_SEEDS), 9)


def test_trajectory_decode(tally) -> None:
    def check(fields: dict) -> None:
        with tally.count(DECODER, "Trajectory.decode") as out:
            t = decodes_trajectory(fields, VOCAB, MAX_TOKENS)
            if t is not None:
                check_trajectory(t, VOCAB, MAX_TOKENS)
            out.name = "ValueError" if t is None else "accepted"

    run_with_seeds(check, _trajectory_entries(["t", "t/0"], 0, VOCAB), TRAJECTORY_SEEDS)
    assert tally.inputs("Trajectory.decode") >= 1000


# ---- the rollout worker's intake ---------------------------------------------------------------------------------

# A task that decodes but asks for weights no trainer will publish costs its worker weights_pull_timeout_s per
# delivery, by design: the intake examples keep min_policy_version either valid (0) or malformed.
_INTAKE_HOSTILE = {
    **PROMPT_HOSTILE,
    "min_policy_version": json_or(st.integers(max_value=-1), st.integers(min_value=2**62 + 1)),
}


def _drain(r, stream: str) -> list[dict]:  # noqa: ANN001
    """The entries of `stream`, which is then deleted."""
    with r.pipeline(transaction=True) as p:
        p.xrange(stream)
        p.delete(stream)
        got, _ = p.execute()
    return [f for _, f in got]


def test_rollout_worker_intake(services, fuzz_cfg, tokenizer, redis_client, tally) -> None:
    r, api = redis_client, "PromptTask -> rollout worker"
    cfg = fuzz_cfg.model_copy(deep=True)
    cfg.rollout.weights_dir += "-intake"
    cfg.rollout.tasks_per_batch = 4
    s = cfg.streams
    worker = make_worker(cfg, tokenizer, r, "fuzz-intake")
    loop = threading.Thread(target=worker.run_forever, name="fuzz-intake")
    loop.start()
    seq = itertools.count()

    @settings(STATEFUL, max_examples=150)
    @given(
        st.lists(
            mostly(entry(prompt_task_base("t"), _INTAKE_HOSTILE), st.sampled_from(PROMPT_SEEDS), 9),
            min_size=1,
            max_size=4,
        )
    )
    def fuzz(entries: list[dict]) -> None:
        with tally.count(PATH, api, len(entries)) as out:
            marks = [str(next(seq)).encode() for _ in entries]
            eids = [r.xadd(s.prompts, {**f, MARK: m}) for f, m in zip(entries, marks, strict=True)]
            good = PromptTask(
                f"good-{next(seq)}", "Who founded Saldane Press?", ["Orlen Vask"], 2, "r1s-stage1"
            )
            r.xadd(s.prompts, good.encode())
            deadline = time.monotonic() + RESOLVE_S
            done: set[str] = set()
            # The good task comes last: once it is done, every entry before it was delivered.
            while good.task_id not in done or any(
                r.xpending_range(s.prompts, "rollout", eid, eid, 1) for eid in eids
            ):
                assert loop.is_alive(), "the worker loop died"
                assert time.monotonic() < deadline, f"hang: tasks unresolved after {RESOLVE_S}s"
                time.sleep(0.02)
                for f in _drain(r, s.trajectories):
                    done.add(Trajectory.decode(f, len(tokenizer), cfg.rollout.max_model_len).task_id)
            dead = {f.get(MARK): f.get(b"error", b"").decode() for f in _drain(r, f"{s.prompts}:dead")}
            out.names = []
            for fields, mark in zip(entries, marks, strict=True):
                task = decodes_task(fields)
                assert mark in dead or (task is not None and task.task_id in done), (fields, task)
                if task is None:  # dead-lettered for what decode says, which names the field
                    assert "meta" in dead[mark], dead[mark]
                out.names.append("dead-lettered" if mark in dead else "completed")

    try:
        fuzz()
    finally:
        worker.stop()
        loop.join(60)
    assert not loop.is_alive()


# ---- the trainer's admission ------------------------------------------------------------------------------------


def test_trainer_admission(fuzz_cfg, learner, redis_client, tmp_path, tally) -> None:
    r, api = redis_client, "Trajectory -> trainer gather"
    cfg = fuzz_cfg.model_copy(deep=True)
    cfg.run.run_dir = str(tmp_path / "run")
    stream, dead_stream = cfg.streams.trajectories, cfg.streams.trajectories + DEAD_SUFFIX
    loop = TrainerLoop(cfg, learner, r, WeightStore(cfg.trainer.weight_chunk_bytes))
    loop.restore()
    target = cfg.trainer.groups_per_step * (cfg.trainer.max_staleness + 1)
    vocab, max_tokens = learner.vocab_size, cfg.rollout.max_model_len
    seq = itertools.count()

    # Entries are drawn for placeholder task and version, bound to an outstanding task (by slot) and the current
    # version afterwards: what Hypothesis draws must not depend on the loop's state.
    @settings(STATEFUL, max_examples=300)
    @given(
        st.lists(
            st.tuples(st.integers(0, target - 1), _trajectory_entries([TASK], VERSION, vocab)),
            max_size=4,
            min_size=1,
        )
    )
    def fuzz(drawn: list[tuple[int, dict]]) -> None:
        loop.top_up_prompts()
        tasks = sorted(loop.out)
        entries = [_bind(f, tasks[slot], loop.state.version) for slot, f in drawn]
        with tally.count(PATH, api, len(entries)) as out:
            marks = [str(next(seq)).encode() for _ in entries]
            eids = [r.xadd(stream, {**f, MARK: m}).decode() for f, m in zip(entries, marks, strict=True)]
            _gather_once(loop)
            admitted = set(loop.held)
            if len(loop.ready) >= cfg.trainer.groups_per_step:
                loop.step(timeout_s=30)
                _gather_once(loop)  # after a failed step's restore, this takes the pending entries over again
            pending = {p["message_id"].decode() for p in r.xpending_range(stream, GROUP, "-", "+", 10_000)}
            held = loop.held | {e for _, es, _ in loop.unsaved for e in es}
            assert pending & set(eids) <= held, "an entry left pending that no group holds"
            dead = {f.get(MARK): f.get(b"error", b"").decode() for f in _drain(r, dead_stream)}
            out.names = []
            for eid, fields, mark in zip(eids, entries, marks, strict=True):
                if decodes_trajectory(fields, vocab, max_tokens) is None:
                    assert eid not in pending and mark in dead, (
                        "a malformed entry not acked and dead-lettered"
                    )
                    assert _TRAJ_ERROR.match(dead[mark].removeprefix("malformed: ")), dead[mark]
                    out.names.append("ValueError")
                else:
                    out.names.append("admitted" if eid in admitted else "discarded")
            loop.top_up_prompts()
            assert len(loop.out) == target

    fuzz()
    assert tally.inputs(api) >= 300
    _trains_on(loop, r, stream)


def _gather_once(loop: TrainerLoop) -> None:
    """One pass of the real gather (top up, read, admit) that ends in its timeout (it never gets 2**30 groups)."""
    with pytest.raises(TimeoutError):
        loop.gather(1 << 30, timeout_s=0.0005)


def _bind(fields: dict, task: str, version: int) -> dict:
    """`fields` drawn for TASK and VERSION, about `task` at `version`."""
    meta = fields.get(b"meta")
    if meta is None:
        return fields
    meta = meta.replace(TASK.encode(), task.encode()).replace(str(VERSION).encode(), str(version).encode())
    return Fields({**fields, b"meta": meta})


def _trains_on(loop: TrainerLoop, r, stream: str) -> None:  # noqa: ANN001
    """After the fuzzing, valid groups for the outstanding tasks still train (a step may fail on a hostile but
    valid group that was complete first: it is dropped and the next step trains)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        loop.top_up_prompts()
        for task in list(loop.out):
            group = loop.buffer.get(task)
            for i in range(N):
                if group is None or i not in group.entries:
                    r.xadd(stream, traj(task, i, loop.state.version, float(i), rng).encode())
        if loop.step(timeout_s=60) is not None:
            return
    raise AssertionError("no step trained after the fuzzing")
