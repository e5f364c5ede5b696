"""PromptTask.decode validates every field (review finding 4): a poison task is a ValueError naming the field,
never a TypeError escaping the worker or a task that allocates 10^9 samples."""

from __future__ import annotations

import json

import pytest

from searchrl.records import MAX_GROUP_SIZE, MAX_QUESTION_CHARS, MAX_TASK_ID_CHARS, PromptTask, task_id_of

GOOD = {
    "task_id": "t1",
    "question": "Where?",
    "golden_answers": ["Tirabel"],
    "group_size": 4,
    "reward_preset": "r1s-stage1",
    "min_policy_version": 2,
    "stage": "stage1",
}


_MISSING = object()


def _decode(**changes: object) -> PromptTask:
    meta = {k: v for k, v in {**GOOD, **changes}.items() if v is not _MISSING}
    return PromptTask.decode({b"meta": json.dumps(meta).encode()})


def test_a_valid_task_decodes() -> None:
    assert _decode() == PromptTask(**GOOD)
    assert _decode(min_policy_version=_MISSING, stage=_MISSING) == PromptTask(
        **{**GOOD, "min_policy_version": 0, "stage": ""}
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"task_id": ""}, "task_id"),
        ({"task_id": 7}, "task_id"),
        ({"task_id": "x" * (MAX_TASK_ID_CHARS + 1)}, "task_id"),
        ({"task_id": _MISSING}, "task_id"),
        ({"question": None}, "question"),
        ({"question": ""}, "question"),
        ({"question": "q" * (MAX_QUESTION_CHARS + 1)}, "question"),
        ({"golden_answers": 5}, "golden_answers"),
        ({"golden_answers": "Tirabel"}, "golden_answers"),
        ({"golden_answers": []}, "golden_answers"),
        ({"golden_answers": ["a", 3]}, "golden_answers"),
        ({"group_size": "4"}, "group_size"),
        ({"group_size": True}, "group_size"),
        ({"group_size": 4.0}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 10**9}, "group_size"),
        ({"group_size": MAX_GROUP_SIZE + 1}, "group_size"),
        ({"reward_preset": None}, "reward_preset"),
        ({"reward_preset": ""}, "reward_preset"),
        ({"min_policy_version": -1}, "min_policy_version"),
        ({"min_policy_version": "1"}, "min_policy_version"),
        ({"stage": 3}, "stage"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_bad_field_is_a_value_error_naming_it(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"malformed prompt task: meta\.{field}\b"):
        _decode(**changes)


def test_group_size_at_the_limit_is_accepted() -> None:
    assert _decode(group_size=MAX_GROUP_SIZE).group_size == MAX_GROUP_SIZE


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"s"'])
def test_a_bad_meta_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="meta"):
        PromptTask.decode({b"meta": raw})
    with pytest.raises(ValueError, match="meta"):
        PromptTask.decode({b"other": b"x"})


def test_task_id_is_read_from_a_task_that_is_otherwise_bad() -> None:
    meta = {**GOOD, "group_size": "4"}
    assert task_id_of({b"meta": json.dumps(meta).encode()}) == "t1"
    assert task_id_of({b"meta": json.dumps({**meta, "task_id": 5}).encode()}) is None
    assert task_id_of({b"meta": b"{not json"}) is None
    assert task_id_of({b"meta": json.dumps({**meta, "task_id": "x" * 600}).encode()}) is None
