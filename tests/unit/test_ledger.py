"""The trainer's Redis ledger on a real redis-server: writes wait out a full Redis (finding 9), and the event
log's mirror to disk survives a torn last line and never duplicates events."""

from __future__ import annotations

import json
import threading
import time

from searchrl.config import StreamsConfig
from searchrl.records import PromptTask
from searchrl_trainer.ledger import Ledger


def test_a_full_redis_pauses_writes_instead_of_crashing(redis_client):
    r = redis_client
    ledger = Ledger(r, StreamsConfig(), "trainer-0")
    task = PromptTask("t1", "q?", ["a"], 2, "r1s-stage1")
    r.config_set("maxmemory", "1")  # any write is refused: OOM command not allowed
    try:
        freed = threading.Timer(1.5, lambda: r.config_set("maxmemory", "0"))
        freed.start()
        t0 = time.monotonic()
        ledger.issue([task], version=0)  # crashed the trainer with ResponseError before
        assert time.monotonic() - t0 >= 1.0
    finally:
        r.config_set("maxmemory", "0")
    assert set(ledger.outstanding()) == {"t1"} and r.xlen("prompts") == 1


def test_event_mirror_resumes_after_a_torn_line_without_duplicates(redis_client, tmp_path):
    r = redis_client
    ledger = Ledger(r, StreamsConfig(), "trainer-0")
    path = tmp_path / "events.jsonl"
    ledger.issue([PromptTask("a", "q?", ["x"], 2, "r1s-stage1")], version=0)
    assert ledger.mirror_events(path) == 1 and r.xlen("searchrl:events") == 0
    with path.open("a") as f:
        f.write('{"ev": "tor')  # a crash mid-write
    ledger.drop(["a"], "expired")
    assert ledger.mirror_events(path) == 1 and ledger.mirror_events(path) == 0
    good = []
    for line in path.read_text().splitlines():
        try:
            good.append(json.loads(line)["ev"])
        except ValueError:
            pass
    assert good == ["issue", "drop"]


def test_a_second_run_on_the_same_keys_is_refused(redis_client):
    """L2: two runs on one Redis would consume each other's trajectories and count each other's tasks."""
    import pytest

    first = Ledger(redis_client, StreamsConfig(), "trainer-0")
    first.claim_run("run-a", "a.yaml")
    first.claim_run("run-a", "a.yaml")  # the same run restarting is fine
    with pytest.raises(
        RuntimeError, match="streams.key_prefix 'searchrl' on this Redis belongs to run run-a"
    ):
        Ledger(redis_client, StreamsConfig(), "trainer-0").claim_run("run-b", "b.yaml")
    Ledger(redis_client, StreamsConfig(key_prefix="other"), "trainer-0").claim_run("run-b", "b.yaml")


def test_old_checkpoints_are_pruned(tmp_path):
    """L4: DeepSpeed never deletes a tag; a full disk would crash-loop the trainer at its next save."""
    from searchrl_trainer.loop import prune_checkpoints

    for step in (2, 4, 10, 12):
        (tmp_path / f"step_{step}").mkdir()
    (tmp_path / "latest").write_text("step_12")
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_10", "step_12"]
