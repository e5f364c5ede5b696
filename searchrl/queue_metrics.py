"""Queue depths as Prometheus metrics, read from Redis at scrape time (nothing runs between scrapes).

`QueueCollector(r, streams)` is registered once per process (the trainer's) and yields:
- `searchrl_queue_entries{stream}`: XLEN of the prompt and trajectory streams (entries not yet deleted);
- `searchrl_queue_pending{stream,group}`: entries delivered to the group's consumers and not yet acked;
- `searchrl_queue_dead_letters{stream}`: XLEN of `<stream>:dead`;
- `searchrl_queue_outstanding_tasks`: tasks issued and not yet trained, dropped or committed (the ledger).
A Redis error during a scrape yields no queue samples for that scrape (logged at debug), never a failed scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from searchrl.config import StreamsConfig

log = logging.getLogger(__name__)


class QueueCollector(Collector):
    def __init__(self, r: redis.Redis, streams: StreamsConfig) -> None:
        self.r, self.s = r, streams

    def collect(self) -> Iterator[GaugeMetricFamily]:
        entries = GaugeMetricFamily(
            "searchrl_queue_entries", "Entries in the stream (XLEN)", labels=["stream"]
        )
        pending = GaugeMetricFamily(
            "searchrl_queue_pending", "Delivered, not yet acked (XPENDING)", labels=["stream", "group"]
        )
        dead = GaugeMetricFamily("searchrl_queue_dead_letters", "Entries in <stream>:dead", labels=["stream"])
        outstanding = GaugeMetricFamily(
            "searchrl_queue_outstanding_tasks", "Prompt tasks issued and not yet resolved (ledger)"
        )
        streams = ((self.s.prompts, "rollout"), (self.s.trajectories, "trainer"))  # and their consumer group
        try:
            pipe = self.r.pipeline(transaction=False)
            for name, _ in streams:
                pipe.xlen(name)
                pipe.xlen(f"{name}:dead")
            pipe.hlen(f"{self.s.key_prefix}:outstanding")
            counts = pipe.execute()
            unacked = [self._pending(name, group) for name, group in streams]
        except redis.RedisError as e:
            log.debug("queue metrics skipped: %s", e)
            return
        for i, (name, group) in enumerate(streams):
            entries.add_metric([name], counts[2 * i])
            dead.add_metric([name], counts[2 * i + 1])
            pending.add_metric([name, group], unacked[i])
        outstanding.add_metric([], counts[-1])
        yield from (entries, pending, dead, outstanding)

    def _pending(self, stream: str, group: str) -> int:
        try:
            return int(self.r.xpending(stream, group)["pending"])
        except redis.ResponseError:  # no such stream or group yet
            return 0


_registered: QueueCollector | None = None


def register(r: redis.Redis, streams: StreamsConfig) -> QueueCollector:
    """Register the process's one queue collector in the default registry (a later call re-points it: servers
    started again in one process, as in the tests, must not register the metric names twice)."""
    global _registered
    if _registered is None:
        _registered = QueueCollector(r, streams)
        REGISTRY.register(_registered)
    else:
        _registered.r, _registered.s = r, streams
    return _registered
