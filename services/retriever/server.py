"""Retriever gRPC server: config -> index -> servicer -> serve. Domain work lives in `service.py`."""

from __future__ import annotations

import logging

from searchrl.config import Config
from searchrl.grpcutil import Server, rpc
from searchrl.proto import common_pb2, retriever_pb2, retriever_pb2_grpc
from searchrl_retriever.service import Retriever, open_retriever

log = logging.getLogger(__name__)


class RetrieverServicer(retriever_pb2_grpc.RetrieverServicer):
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    @rpc("retriever")
    def Search(self, request, context):  # noqa: N802 - gRPC method name
        hits = self.retriever.search(list(request.queries), request.top_k)
        return retriever_pb2.SearchResponse(
            results=[
                retriever_pb2.QueryResult(
                    passages=[
                        common_pb2.Passage(id=p.id, title=p.title, text=p.text, score=s) for p, s in row
                    ]
                )
                for row in hits
            ]
        )

    @rpc("retriever")
    def Info(self, request, context):  # noqa: N802
        idx = self.retriever.index
        return retriever_pb2.InfoResponse(
            num_passages=len(idx.passages), dim=idx.index.d, embedder=idx.embedder_name, device=idx.device
        )


def serve(cfg: Config) -> Server:
    """Start the retriever server (returns once serving; call `.grpc.wait_for_termination()` to block)."""
    retriever = open_retriever(cfg, progress=True)
    r = cfg.retriever
    server = Server(r.port, r.metrics_port, r.workers, cfg.security, r.health_port)
    server.add(
        retriever_pb2_grpc.add_RetrieverServicer_to_server,
        RetrieverServicer(retriever),
        "searchrl.v1.Retriever",
    )
    server.start()
    log.info("retriever ready: %d passages, device %s", len(retriever.index.passages), retriever.index.device)
    return server
