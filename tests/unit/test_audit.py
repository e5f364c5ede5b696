"""`searchrl audit`'s replay of a run's events: it must catch a group trained twice, a task nobody can account
for, and a task both trained and dropped -- and must not flag the retraining a restore causes."""

from searchrl.audit import replay


def ev(kind: str, **kw) -> dict:
    return {"ev": kind, **kw}


def test_clean_run_with_a_restore_passes():
    events = [
        ev("issue", tasks=["a", "b", "c", "d", "e"], v=0),
        ev("train", step=1, v=1, tasks=["a", "b"]),
        ev("checkpoint", step=1),
        ev("train", step=2, v=2, tasks=["c", "d"]),
        ev("restore", step=1, rolled_back=["c", "d"]),  # crash: step 2 is not in the weights
        ev("train", step=2, v=4, tasks=["d", "c"]),  # trained again
        ev("train", step=2, v=4, tasks=["d", "c"]),  # a re-sent transaction repeats its event
        ev("drop", tasks=["e"], reason="dead-lettered: group_size: must be an integer"),
        ev("discard", traj="a/1", reason="duplicate sample"),
    ]
    rep = replay(events, in_flight=set())
    assert rep.ok and rep.trained == 4 and rep.issued == 5 and rep.rolled_back_steps == 1
    assert rep.dropped == {"dead-lettered": 1} and list(rep.dead_lettered) == ["e"]
    assert rep.discarded_entries == {"duplicate sample": 1} and rep.committed_step == 2


def test_group_trained_twice_fails():
    events = [ev("issue", tasks=["a", "b"], v=0), ev("train", step=1, v=1, tasks=["a", "a"])]
    rep = replay(events, in_flight={"b"})
    assert not rep.ok and rep.trained_twice == ["a"]
    events = [
        ev("issue", tasks=["a"], v=0),
        ev("train", step=1, tasks=["a"]),
        ev("train", step=2, tasks=["a"]),
    ]
    assert replay(events, set()).trained_twice == ["a"]


def test_lost_task_and_double_resolution_fail():
    events = [ev("issue", tasks=["a", "b", "c"], v=0), ev("train", step=1, tasks=["a"])]
    rep = replay(events, in_flight={"b"})
    assert not rep.ok and rep.unaccounted == ["c"] and rep.in_flight == 1
    events += [
        ev("drop", tasks=["a"], reason="stale: 2 steps behind"),
        ev("drop", tasks=["c"], reason="expired"),
    ]
    rep = replay(events, in_flight={"b"})
    assert not rep.ok and rep.resolved_twice == ["a"] and not rep.unaccounted


def test_rolled_back_task_is_in_flight_until_trained_or_dropped():
    events = [
        ev("issue", tasks=["a"], v=0),
        ev("train", step=1, tasks=["a"]),
        ev("restore", step=0, rolled_back=["a"]),
    ]
    assert not replay(events, in_flight=set()).ok  # neither in the weights nor anywhere else: lost
    assert replay(events, in_flight={"a"}).ok
