"""Shards and the router (issue 9), with real retriever servers over loopback sockets: two shards of the tiny
corpus answer exactly like the unsharded index; a dead replica hands over to the next; a shard that is down or
too slow (a stopped process) leaves partial results and says which shard and why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from searchrl.config import Config, ConfigError, SecurityConfig, ShardConfig, load_config
from searchrl.grpcutil import channel, wait_serving
from searchrl.proto import retriever_pb2, retriever_pb2_grpc
from searchrl.redisio import free_port
from searchrl_retriever.backend import index_dir, open_backend
from searchrl_retriever.router import Router, response_status
from searchrl_retriever.server import SHARD_ERRORS_KEY, serve
from tests.conftest import tiny_config_at

QUERIES = [
    "Who founded Korrin Works?",
    "Where was Orlen Vask born?",
    "inventor born in 1888",
    "Blue Heron Guild",
]


def _shard_config(run_dir: Path, index: int, count: int = 2) -> Config:
    cfg = tiny_config_at(run_dir)
    cfg.retriever.index_dir = str(run_dir.parent / "index")  # one volume, a folder per shard
    cfg.retriever.shard = ShardConfig(index=index, count=count)
    cfg.retriever.port, cfg.retriever.metrics_port = free_port(), free_port()
    return cfg


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Shard 0 in this process, shard 1 as a `searchrl serve retriever` process (so it can be stopped)."""
    root = tmp_path_factory.mktemp("shards")
    cfg0, cfg1 = _shard_config(root / "run0", 0), _shard_config(root / "run1", 1)
    config_file = root / "shard1.yaml"
    config_file.write_text(yaml.safe_dump(cfg1.model_dump(mode="json")))
    with (root / "shard1.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "searchrl.cli", "serve", "retriever", "-c", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server0 = serve(cfg0)
    addresses = [f"127.0.0.1:{cfg0.retriever.port}", f"127.0.0.1:{cfg1.retriever.port}"]
    try:
        wait_serving(addresses, SecurityConfig(), timeout=120, alive=lambda: proc.poll() is None)
        yield {"addresses": addresses, "proc": proc, "configs": (cfg0, cfg1), "root": root}
    finally:
        proc.kill()
        proc.wait()
        server0.stop(0)


@pytest.fixture(scope="module")
def whole(cluster):
    """The unsharded index of the same corpus, searched in process."""
    return open_backend(tiny_config_at(cluster["root"] / "whole"))


def _ids(rows) -> list[list[str]]:
    return [[h.passage.id for h in row] for row in rows]


def test_two_shards_answer_like_the_unsharded_index(cluster, whole) -> None:
    cfg0, cfg1 = cluster["configs"]
    assert index_dir(cfg0).name == "shard-0-of-2" and index_dir(cfg1).name == "shard-1-of-2"
    router = Router([[a] for a in cluster["addresses"]], SecurityConfig(), deadline_s=30)
    for k in (1, 3, 8):
        got, want = router.search_batch(QUERIES, k), whole.search_batch(QUERIES, k)
        assert not got.partial and _ids(got) == _ids(want)
        for g, w in zip(got, want, strict=True):
            assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-5)
    assert router.info().num_passages == 22
    shard_sizes = [open_backend(c).info().num_passages for c in cluster["configs"]]
    assert shard_sizes == [11, 11]


def test_the_router_is_a_retriever_over_grpc(cluster, whole, tmp_path) -> None:
    cfg = tiny_config_at(tmp_path / "router")
    cfg.retriever.router.shards = cluster["addresses"]
    cfg.retriever.mode = "router"
    cfg.retriever.port, cfg.retriever.metrics_port = free_port(), free_port()
    server = serve(cfg)
    try:
        with channel(f"127.0.0.1:{cfg.retriever.port}", cfg.security) as ch:
            stub = retriever_pb2_grpc.RetrieverStub(ch)
            response = stub.Search(retriever_pb2.SearchRequest(queries=QUERIES, top_k=3), timeout=30)
            info = stub.Info(retriever_pb2.InfoRequest(), timeout=30)
    finally:
        server.stop(0)
    assert [[p.id for p in r.passages] for r in response.results] == _ids(whole.search_batch(QUERIES, 3))
    assert not response.partial and not response.shard_errors
    assert info.num_passages == 22 and info.dim == 384


def test_a_dead_replica_hands_over_to_the_next(cluster, whole) -> None:
    dead = f"127.0.0.1:{free_port()}"
    a0, a1 = cluster["addresses"]
    router = Router([[dead, a0], [a1, dead]], SecurityConfig(), deadline_s=30)
    for _ in range(2):  # round-robin starts on the dead replica of one shard each time
        rows = router.search_batch(QUERIES, 3)
        assert not rows.partial and _ids(rows) == _ids(whole.search_batch(QUERIES, 3))


def test_a_down_shard_leaves_partial_results_and_says_so(cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    a0, _ = cluster["addresses"]
    rows = Router([[a0], [dead]], SecurityConfig(), deadline_s=30).search_batch(QUERIES, 3)
    assert rows.partial and [(e.shard, e.address, e.code) for e in rows.shard_errors] == [
        (1, dead, "UNAVAILABLE")
    ]
    shard0 = open_backend(cluster["configs"][0]).search_batch(QUERIES, 3)
    assert _ids(rows) == _ids(shard0), "the shards that answered still count"
    status = response_status(rows)
    assert status["partial"] is True and status["shard_errors"][0].code == "UNAVAILABLE"
    assert response_status(shard0) == {}


def test_a_grpc_caller_of_a_router_with_a_down_shard_sees_partial_and_why(cluster, tmp_path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cfg = tiny_config_at(tmp_path / "router")
    cfg.retriever.router.shards = [cluster["addresses"][0], dead]
    cfg.retriever.mode = "router"
    cfg.retriever.port, cfg.retriever.metrics_port = free_port(), free_port()
    server = serve(cfg)
    try:
        with channel(f"127.0.0.1:{cfg.retriever.port}", cfg.security) as ch:
            stub = retriever_pb2_grpc.RetrieverStub(ch)
            response, call = stub.Search.with_call(
                retriever_pb2.SearchRequest(queries=QUERIES, top_k=3), timeout=30
            )
    finally:
        server.stop(0)
    assert response.partial and [(e.shard, e.address, e.code) for e in response.shard_errors] == [
        (1, dead, "UNAVAILABLE")
    ]
    assert all(len(r.passages) == 3 for r in response.results)  # shard 0's answers
    assert dict(call.trailing_metadata())[SHARD_ERRORS_KEY]


def test_a_stopped_shard_misses_the_deadline(cluster) -> None:
    proc = cluster["proc"]
    a0, a1 = cluster["addresses"]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        rows = Router([[a0], [a1]], SecurityConfig(), deadline_s=1.0).search_batch(QUERIES, 2)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert rows.partial and [(e.shard, e.code) for e in rows.shard_errors] == [(1, "DEADLINE_EXCEEDED")]
    assert all(len(row) == 2 for row in rows)
    with channel(a1, SecurityConfig()) as ch:  # the shard is back
        stub = retriever_pb2_grpc.RetrieverStub(ch)
        assert stub.Info(retriever_pb2.InfoRequest(), timeout=30).num_passages == 11


def test_router_needs_addresses() -> None:
    with pytest.raises(ValueError, match="retriever.router.shards"):
        Router([["a:1"], []], SecurityConfig(), 1.0)
    with pytest.raises(ConfigError, match="mode router needs at least one shard address"):
        load_config(None, ["retriever.mode=router"])
