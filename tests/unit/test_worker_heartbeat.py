"""The worker heartbeat (`redisio.touch`) against a real redis-server: it refreshes only entries this consumer
still owns, so it never steals back a task another worker has reclaimed (review finding 1, last paragraph)."""

from __future__ import annotations

from searchrl.redisio import ensure_group, touch


def _owners(r) -> dict[str, tuple[str, int]]:  # noqa: ANN001
    return {
        p["message_id"].decode(): (p["consumer"].decode(), p["times_delivered"])
        for p in r.xpending_range("s", "g", "-", "+", 10)
    }


def test_touch_refreshes_own_entries_and_leaves_reclaimed_ones(redis_client) -> None:
    r = redis_client
    ensure_group(r, "s", "g")
    ids = [r.xadd("s", {"meta": str(i)}).decode() for i in range(3)]
    r.xreadgroup("g", "a", {"s": ">"}, count=3)
    r.xclaim("s", "g", "b", 0, [ids[1]])  # worker b reclaimed ids[1] while a was presumed dead

    assert touch(r, "s", "g", "a", ids) == [ids[0], ids[2]]
    assert _owners(r) == {ids[0]: ("a", 1), ids[1]: ("b", 2), ids[2]: ("a", 1)}  # JUSTID: no extra delivery

    r.xack("s", "g", ids[0])
    assert touch(r, "s", "g", "a", ids) == [ids[2]]
    assert touch(r, "s", "g", "a", []) == []
