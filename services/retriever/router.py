"""The shard router (retriever.mode router): scatter a batch to every shard's retriever over gRPC, gather, merge.

Contract:
- Each shard is a list of replica addresses (retriever.router.shards); a batch goes to one replica per shard
  (round-robin), all shards at once, and a replica that is UNAVAILABLE hands the call to the next one while
  time is left. Every shard has until `deadline_s` after the batch started.
- The answer merges the shards' hits per query by score, best first (equal scores: lower shard first), top k.
  Dense shards of one embedder give exactly the unsharded index's answer for exact tiers; BM25 shards score
  with their own document frequencies, so a merged BM25 ranking is approximate.
- A shard that fails or misses the deadline is left out, and `Results.shard_errors` says which and why (the
  gRPC servicer reports them as SearchResponse.partial / shard_errors, see `response_status`). When no shard
  answers, the answer is empty rows with every shard listed.
- The router holds no index: its fingerprint is "" (never cache a router's answers; shards cache their own).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from searchrl.config import Config, SecurityConfig
from searchrl.grpcutil import channel
from searchrl.proto import retriever_pb2, retriever_pb2_grpc
from searchrl_retriever.backend import BackendInfo, Hit, Results, ShardError
from searchrl_retriever.corpus import Passage
from searchrl_retriever.metrics import STAGE_SECONDS


class ShardFailed(Exception):
    def __init__(self, error: ShardError) -> None:
        super().__init__(error.message)
        self.error = error


class Router:
    mode = "router"
    fingerprint = ""

    def __init__(self, shards: list[list[str]], security: SecurityConfig, deadline_s: float) -> None:
        if not shards or not all(shards):
            raise ValueError("retriever.router.shards: every shard needs at least one address")
        self.shards = shards
        self.deadline_s = deadline_s
        self._stubs = {a: retriever_pb2_grpc.RetrieverStub(channel(a, security)) for s in shards for a in s}
        self._turn = [itertools.count() for _ in shards]
        self._lock = threading.Lock()
        # Enough threads for a few concurrent batches (the batcher may run several) to reach every shard.
        self._pool = ThreadPoolExecutor(max_workers=4 * len(shards), thread_name_prefix="shard")

    @staticmethod
    def from_config(cfg: Config) -> Router:
        rc = cfg.retriever.router
        shards = [[s] if isinstance(s, str) else list(s) for s in rc.shards]
        return Router(shards, cfg.security, rc.deadline_s)

    def search_batch(self, queries: list[str], k: int) -> Results:
        deadline = time.monotonic() + self.deadline_s
        request = retriever_pb2.SearchRequest(queries=queries, top_k=k)
        calls = [
            self._pool.submit(self._ask, i, "Search", request, deadline) for i in range(len(self.shards))
        ]
        answers: list[list[list[Hit]]] = []
        errors: list[ShardError] = []
        for call in calls:
            try:
                response = call.result()
            except ShardFailed as e:
                errors.append(e.error)
                continue
            answers.append([[_hit(p) for p in r.passages] for r in response.results])
        rows = [merge_top_k([a[q] for a in answers], k) for q in range(len(queries))]
        return Results(rows, tuple(errors))

    def info(self) -> BackendInfo:
        """Sums the shards' passages (those that answer within the deadline); dim and embedder of the first."""
        deadline = time.monotonic() + self.deadline_s
        request = retriever_pb2.InfoRequest()
        calls = [self._pool.submit(self._ask, i, "Info", request, deadline) for i in range(len(self.shards))]
        infos = []
        for call in calls:
            try:
                infos.append(call.result())
            except ShardFailed:
                continue
        first = infos[0] if infos else retriever_pb2.InfoResponse()
        device = f"router ({len(infos)}/{len(self.shards)} shards answered)"
        return BackendInfo(sum(i.num_passages for i in infos), first.dim, first.embedder, device)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _ask(self, shard: int, method: str, request: object, deadline: float) -> object:
        """Call `method` on one replica of `shard`, the next one after an UNAVAILABLE, until the deadline."""
        replicas = self.shards[shard]
        with self._lock:
            start = next(self._turn[shard])
        t0 = time.perf_counter()
        for attempt in range(len(replicas)):
            address = replicas[(start + attempt) % len(replicas)]
            left = deadline - time.monotonic()
            if left <= 0:
                raise ShardFailed(
                    ShardError(shard, address, "DEADLINE_EXCEEDED", "no time left for this shard")
                )
            try:
                answer = getattr(self._stubs[address], method)(request, timeout=left)
                STAGE_SECONDS.labels("shard", str(shard)).observe(time.perf_counter() - t0)
                return answer
            except grpc.RpcError as e:
                error = ShardError(shard, address, e.code().name, e.details() or "")
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    break
        raise ShardFailed(error)


def merge_top_k(per_shard: list[list[Hit]], k: int) -> list[Hit]:
    """The k best hits of several best-first lists, by score; equal scores keep the earlier list first."""
    return heapq.nsmallest(k, itertools.chain.from_iterable(per_shard), key=lambda h: -h.score)


def response_status(results: list[list[Hit]]) -> dict[str, object]:
    """SearchResponse fields (partial, shard_errors) for `results` (empty for a complete answer)."""
    errors = getattr(results, "shard_errors", ())
    if not errors:
        return {}
    return {
        "partial": True,
        "shard_errors": [
            retriever_pb2.ShardError(shard=e.shard, address=e.address, code=e.code, message=e.message)
            for e in errors
        ],
    }


def _hit(p: object) -> Hit:
    return Hit(Passage(p.id, p.title, p.text), p.score)
