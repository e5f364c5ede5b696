"""XAUTOCLAIM with a cursor against a real redis-server: idle entries behind live ones are still found."""

import time

from searchrl.redisio import Reclaimer, ensure_group, touch


def test_reclaimer_walks_past_live_entries(redis_client):
    r = redis_client
    ensure_group(r, "s", "g")
    ids = [r.xadd("s", {"meta": str(i)}).decode() for i in range(6)]
    r.xreadgroup("g", "live", {"s": ">"}, count=4)  # first 4 held by a live consumer
    r.xreadgroup("g", "dead", {"s": ">"}, count=2)  # last 2 by a dead one
    time.sleep(0.25)
    touch(r, "s", "g", "live", ids[:4])  # the live consumer's heartbeat
    reclaim = Reclaimer(r, "s", "g", "me", min_idle_ms=200)
    got = []
    for _ in range(4):  # two entries per call: the cursor moves on past the live head
        got += [eid for eid, _ in reclaim(2)]
    assert got == ids[4:]
    owners = {
        p["message_id"].decode(): p["consumer"].decode() for p in r.xpending_range("s", "g", "-", "+", 10)
    }
    assert owners == {**dict.fromkeys(ids[:4], "live"), **dict.fromkeys(ids[4:], "me")}
