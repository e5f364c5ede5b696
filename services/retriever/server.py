"""Retriever server: config -> back end + batcher (`service.py`) -> gRPC servicer and, with `retriever.http_port`,
the seeds' HTTP APIs (`http_api.py`) in the same process -> serve."""

from __future__ import annotations

import logging

import grpc

from searchrl.config import Config
from searchrl.grpcutil import RPCS_PER_WORKER, Server, rpc
from searchrl.proto import common_pb2, retriever_pb2, retriever_pb2_grpc
from searchrl_retriever.batcher import BatcherClosed
from searchrl_retriever.http_api import HttpServer
from searchrl_retriever.router import response_status
from searchrl_retriever.service import Retriever, describe_shard_errors, open_retriever

log = logging.getLogger(__name__)

# Trailing metadata of a partial answer (a shard missed its deadline): which shards did not answer.
SHARD_ERRORS_KEY = "searchrl-shard-errors"


class RetrieverServicer(retriever_pb2_grpc.RetrieverServicer):
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    @rpc("retriever")
    def Search(self, request, context):  # noqa: N802 - gRPC method name
        try:
            hits = self.retriever.search(
                list(request.queries), request.top_k, timeout=context.time_remaining(), api="grpc"
            )
        except TimeoutError as e:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except BatcherClosed as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if hits.partial:  # an OK status with the hits that came, and which shards did not answer (also in the
            # response's partial/shard_errors fields)
            context.set_trailing_metadata(((SHARD_ERRORS_KEY, describe_shard_errors(hits.shard_errors)),))
        return retriever_pb2.SearchResponse(
            results=[
                retriever_pb2.QueryResult(
                    passages=[
                        common_pb2.Passage(id=p.id, title=p.title, text=p.text, score=s) for p, s in row
                    ]
                )
                for row in hits
            ],
            **response_status(hits),
        )

    @rpc("retriever")
    def Info(self, request, context):  # noqa: N802
        info = self.retriever.backend.info()
        return retriever_pb2.InfoResponse(
            num_passages=info.num_passages, dim=info.dim, embedder=info.embedder, device=info.device
        )


class RetrieverServer:
    """The gRPC server and, with `retriever.http_port`, the HTTP APIs, over one `Retriever` (one batcher)."""

    def __init__(self, grpc_server: Server, http: HttpServer | None, retriever: Retriever) -> None:
        self.server = grpc_server
        self.http = http
        self.retriever = retriever

    def stop(self, grace: float = 2.0) -> None:
        """Stop taking requests, let the ones in flight finish (within `grace` for gRPC), then drain the batcher."""
        if self.http is not None:
            self.http.stop()
        self.server.stop(grace)
        self.retriever.close()


def serve(cfg: Config) -> RetrieverServer:
    """Start the retriever (returns once serving; `.server.grpc.wait_for_termination()` blocks)."""
    retriever = open_retriever(cfg, progress=True)
    r = cfg.retriever
    server = Server(r.port, r.metrics_port, r.workers, cfg.security, r.health_port)
    server.add(
        retriever_pb2_grpc.add_RetrieverServicer_to_server,
        RetrieverServicer(retriever),
        "searchrl.v1.Retriever",
    )
    http = None
    if r.http_port:
        # "[::]" is gRPC's spelling of all interfaces; uvicorn's (IPv4, like the metrics endpoint) is 0.0.0.0.
        host = "0.0.0.0" if server.host == "[::]" else server.host.strip("[]")
        http = HttpServer(retriever, host, r.http_port, cfg.security, r.workers, r.workers * RPCS_PER_WORKER)
    server.start()
    if http is not None:
        http.start()
    info = retriever.backend.info()
    log.info("retriever ready: %d passages, device %s", info.num_passages, info.device)
    return RetrieverServer(server, http, retriever)
