"""Pending-entry reads of searchrl.redisio against a real Redis server: entries deleted from the stream while
pending (XDEL, MAXLEN trimming) are acknowledged away instead of staying in the pending list for ever, and they
never hide the live entries behind them."""

from __future__ import annotations

from searchrl.redisio import ensure_group, own_pending, read_group, take_over_pending


def _pending_ids(r, consumer: str | None = None) -> list[str]:  # noqa: ANN001
    rows = (
        r.xpending_range("s", "g", "-", "+", 100, consumername=consumer)
        if consumer
        else r.xpending_range("s", "g", "-", "+", 100)
    )
    return [row["message_id"].decode() for row in rows]


def _setup(r, n: int) -> list[str]:  # noqa: ANN001
    ensure_group(r, "s", "g")
    ids = [r.xadd("s", {"i": str(i)}).decode() for i in range(n)]
    assert [e for e, _ in read_group(r, "s", "g", "w1", n, 10)] == ids
    return ids


def test_own_pending_skips_and_acks_deleted_entries_and_finds_the_live_one_behind_them(redis_client):
    r = redis_client
    ids = _setup(r, 3)
    r.xdel("s", ids[0], ids[1])
    got = own_pending(r, "s", "g", "w1", 1)
    assert [e for e, _ in got] == [ids[2]] and got[0][1] == {b"i": b"2"}
    assert _pending_ids(r) == [ids[2]]  # the deleted two left the pending list


def test_own_pending_returns_nothing_once_only_deleted_entries_were_pending(redis_client):
    r = redis_client
    ids = _setup(r, 2)
    r.xdel("s", *ids)
    assert own_pending(r, "s", "g", "w1", 5) == []
    assert _pending_ids(r) == []


def test_take_over_pending_moves_every_live_entry_and_acks_the_deleted(redis_client):
    r = redis_client
    ids = _setup(r, 4)
    r.xdel("s", ids[1])
    got = take_over_pending(r, "s", "g", "trainer", page=2)
    assert [e for e, _ in got] == [ids[0], ids[2], ids[3]]
    assert _pending_ids(r, "trainer") == [ids[0], ids[2], ids[3]] and _pending_ids(r, "w1") == []
