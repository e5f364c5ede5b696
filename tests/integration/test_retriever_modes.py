"""retriever.mode bm25 and hybrid served over gRPC on a loopback socket (issue 9): the answers are the back
end's, Info describes it, and the saved BM25 index is reused by the next server."""

from __future__ import annotations

import pytest

from searchrl.grpcutil import channel
from searchrl.proto import retriever_pb2, retriever_pb2_grpc
from searchrl.redisio import free_port
from searchrl_retriever.backend import index_dir, open_backend
from searchrl_retriever.server import serve
from tests.conftest import tiny_config_at

QUERIES = ["Who founded Korrin Works?", "inventor born in Tirabel"]


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_mode_over_grpc(mode: str, tmp_path) -> None:
    cfg = tiny_config_at(tmp_path / "run")
    cfg.retriever.mode = mode
    cfg.retriever.port, cfg.retriever.metrics_port = free_port(), free_port()
    server = serve(cfg)
    try:
        with channel(f"127.0.0.1:{cfg.retriever.port}", cfg.security) as ch:
            stub = retriever_pb2_grpc.RetrieverStub(ch)
            response = stub.Search(retriever_pb2.SearchRequest(queries=QUERIES, top_k=3), timeout=60)
            info = stub.Info(retriever_pb2.InfoRequest(), timeout=60)
    finally:
        server.stop(0)
    stamp = (index_dir(cfg) / "bm25" / "meta.json").stat().st_mtime_ns
    want = open_backend(cfg).search_batch(QUERIES, 3)
    assert (index_dir(cfg) / "bm25" / "meta.json").stat().st_mtime_ns == stamp, "reused, not rebuilt"
    got = [[(p.id, round(p.score, 5)) for p in r.passages] for r in response.results]
    assert got == [[(h.passage.id, round(h.score, 5)) for h in row] for row in want]
    assert {p.id for p in response.results[0].passages} >= {"o1"}
    assert info.num_passages == 22 and info.embedder == (
        "bm25" if mode == "bm25" else "builtin:all-minilm-l6-v2"
    )
