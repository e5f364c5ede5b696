"""Prometheus metrics of the retriever, in one place so that every back end (and H4's shard router) labels
them the same way. `shard` is "" for a local index and the shard's name behind a router.

Queries/s is `rate(searchrl_retriever_queries_total[1m])`; the cache hit rate is both a ratio gauge per tier and
`rate(...cache_lookups_total{result="hit"}) / rate(...cache_lookups_total)`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

QUERIES = Counter("searchrl_retriever_queries_total", "Queries answered (cache hits included)", ["api"])
BATCH_QUERIES = Histogram("searchrl_retriever_batch_queries", "Queries per back-end batch", buckets=_SIZES)
BATCH_REQUESTS = Histogram(
    "searchrl_retriever_batch_requests", "Requests coalesced into one back-end batch", buckets=_SIZES
)
QUEUE_WAIT = Histogram(
    "searchrl_retriever_queue_wait_seconds",
    "From a request joining the queue to its batch starting",
    buckets=_SECONDS,
)
STAGE_SECONDS = Histogram(
    "searchrl_retriever_stage_seconds",
    "Seconds per batch in each back-end stage",
    ["stage", "shard"],
    buckets=_SECONDS,
)
CACHE_LOOKUPS = Counter("searchrl_retriever_cache_lookups_total", "Query cache lookups", ["tier", "result"])
CACHE_HIT_RATIO = Gauge("searchrl_retriever_cache_hit_ratio", "Hits / lookups since start", ["tier"])
CACHE_ERRORS = Counter("searchrl_retriever_cache_errors_total", "Shared (Redis) cache calls that failed")
