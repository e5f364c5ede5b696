"""The query cache: answers per (back-end fingerprint, k, query), in an in-process LRU and optionally shared by
every replica in Redis with a TTL.

Contract:
- `get(fingerprint, k, queries)` returns one entry per query: its hits, or None on a miss. The LRU is asked
  first, then Redis (one MGET); Redis hits are copied into the LRU.
- `put(fingerprint, k, queries, rows)` stores complete answers (the caller never stores a partial one) in both.
- The fingerprint names the index and everything else the hits depend on (backend.py), so a rebuilt index or
  another mode never gets old answers; an empty fingerprint is never cached.
- Redis is an optimisation: a failed call is counted (`cache_errors_total`), logged once, and costs only hits;
  its client does not retry. Keys are `searchrl:retriever:cache:<sha256>`, values JSON [[id, title, text, score]].
- Lookups are counted per tier and result, and the hit ratio since start is a gauge per tier.
Thread-safe. It knows nothing about batching or serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict

import redis

from searchrl_retriever.backend import Hit
from searchrl_retriever.corpus import Passage
from searchrl_retriever.metrics import CACHE_ERRORS, CACHE_HIT_RATIO, CACHE_LOOKUPS

log = logging.getLogger(__name__)

KEY_PREFIX = "searchrl:retriever:cache:"
Row = list[Hit]


def shared_client(url: str) -> redis.Redis:
    """A Redis client for the cache: short timeouts and no retries (a slow cache must not slow searches)."""
    return redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)


class _Tier:
    """Hit/lookup counts of one tier, exported as counters and a ratio gauge."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = self.lookups = 0
        self._lock = threading.Lock()

    def count(self, hits: int, lookups: int) -> None:
        CACHE_LOOKUPS.labels(self.name, "hit").inc(hits)
        CACHE_LOOKUPS.labels(self.name, "miss").inc(lookups - hits)
        with self._lock:
            self.hits += hits
            self.lookups += lookups
            CACHE_HIT_RATIO.labels(self.name).set(self.hits / self.lookups if self.lookups else 0.0)


class QueryCache:
    def __init__(self, entries: int, shared: redis.Redis | None = None, ttl_s: int = 0) -> None:
        self.entries = entries
        self.shared = shared if ttl_s > 0 else None
        self.ttl_s = ttl_s
        self._lru: OrderedDict[str, Row] = OrderedDict()
        self._lock = threading.Lock()
        self._tiers = {"lru": _Tier("lru"), "redis": _Tier("redis")}
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.entries > 0 or self.shared is not None

    def get(self, fingerprint: str, k: int, queries: list[str]) -> list[Row | None]:
        out: list[Row | None] = [None] * len(queries)
        if not fingerprint or not self.enabled:
            return out
        keys = [_key(fingerprint, k, q) for q in queries]
        if self.entries:
            with self._lock:
                for i, key in enumerate(keys):
                    if key in self._lru:
                        self._lru.move_to_end(key)
                        out[i] = self._lru[key]
            self._tiers["lru"].count(sum(r is not None for r in out), len(keys))
        missing = [i for i, r in enumerate(out) if r is None]
        if self.shared is not None and missing:
            values = self._call(lambda: self.shared.mget([KEY_PREFIX + keys[i] for i in missing]))
            if values is not None:
                found = {i: _decode(v) for i, v in zip(missing, values, strict=True) if v is not None}
                self._tiers["redis"].count(len(found), len(missing))
                for i, row in found.items():
                    out[i] = row
                self._remember({keys[i]: row for i, row in found.items()})
        return out

    def put(self, fingerprint: str, k: int, queries: list[str], rows: list[Row]) -> None:
        if not fingerprint or not self.enabled:
            return
        items = {_key(fingerprint, k, q): row for q, row in zip(queries, rows, strict=True)}
        self._remember(items)
        if self.shared is not None:

            def store() -> None:
                pipe = self.shared.pipeline(transaction=False)
                for key, row in items.items():
                    pipe.set(KEY_PREFIX + key, _encode(row), ex=self.ttl_s)
                pipe.execute()

            self._call(store)

    def _remember(self, items: dict[str, Row]) -> None:
        if not self.entries or not items:
            return
        with self._lock:
            for key, row in items.items():
                self._lru[key] = row
                self._lru.move_to_end(key)
            while len(self._lru) > self.entries:
                self._lru.popitem(last=False)

    def _call(self, fn):  # noqa: ANN001, ANN202 - a Redis call whose failure costs only hits
        try:
            return fn()
        except redis.RedisError as e:
            CACHE_ERRORS.inc()
            if not self._warned:
                self._warned = True
                log.warning("shared query cache unavailable (%s); searching without it", e)
            return None


def _key(fingerprint: str, k: int, query: str) -> str:
    return hashlib.sha256(f"{fingerprint}\0{k}\0{query}".encode()).hexdigest()


def _encode(row: Row) -> str:
    return json.dumps([[h.passage.id, h.passage.title, h.passage.text, h.score] for h in row])


def _decode(value: bytes) -> Row:
    return [Hit(Passage(pid, title, text), float(score)) for pid, title, text, score in json.loads(value)]
