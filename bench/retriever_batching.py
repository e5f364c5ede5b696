"""Why the search loop sends one Search call per round: Q queries in one batched gRPC call vs Q calls of one
query, against a real retriever server (tiny world corpus, MiniLM embedder). Ratio measured in this process.
Usage: python bench/retriever_batching.py [Q]"""

from __future__ import annotations

import sys
import tempfile
import time

from searchrl.config import load_config
from searchrl.grpcutil import channel
from searchrl.proto import retriever_pb2, retriever_pb2_grpc
from searchrl.redisio import free_port
from searchrl_retriever.server import serve


def main() -> None:
    q = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    cfg = load_config("configs/tiny.yaml")
    cfg.run.run_dir = tempfile.mkdtemp()
    cfg.retriever.port, cfg.retriever.metrics_port = free_port(), 0
    server = serve(cfg)
    stub = retriever_pb2_grpc.RetrieverStub(channel(f"127.0.0.1:{cfg.retriever.port}", cfg.security))
    queries = [f"who founded organisation number {i}" for i in range(q)]
    stub.Search(retriever_pb2.SearchRequest(queries=queries[:4], top_k=3))  # warm up
    best_batch, best_single = float("inf"), float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        stub.Search(retriever_pb2.SearchRequest(queries=queries, top_k=3))
        best_batch = min(best_batch, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for x in queries:
            stub.Search(retriever_pb2.SearchRequest(queries=[x], top_k=3))
        best_single = min(best_single, time.perf_counter() - t0)
    server.stop(0)
    print(
        f"{q} queries: one batched call {best_batch * 1e3:.0f} ms, {q} single calls {best_single * 1e3:.0f} ms, "
        f"batched is {best_single / best_batch:.1f}x faster"
    )


if __name__ == "__main__":
    main()
