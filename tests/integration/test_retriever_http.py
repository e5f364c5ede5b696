"""The seeds' HTTP APIs on a real uvicorn server over a socket, beside the real gRPC server in the same process,
called with a real HTTP client (httpx) with the seeds' exact request and response JSON: R1-Searcher
POST /queries, Search-R1 POST /retrieve, ReSearch POST /batch_search and GET /health. Bad payloads get 422
naming the field; with a token every endpoint but /health needs it; TLS when configured."""

from __future__ import annotations

import ssl
import urllib.request

import httpx
import pytest

from searchrl.config import SecurityConfig
from searchrl.grpcutil import channel
from searchrl.proto import retriever_pb2, retriever_pb2_grpc
from searchrl.redisio import free_port
from searchrl_retriever.corpus import parse_passage
from searchrl_retriever.server import serve
from tests.conftest import tiny_config_at
from tests.integration.test_security import TOKEN, certs, with_token  # noqa: F401 - certs is a fixture

QUERIES = ["Saldane Press founder", "Lake Venn city"]


def _serve(tmp_path, security: SecurityConfig):
    cfg = tiny_config_at(tmp_path / "run")
    cfg.retriever.port, cfg.retriever.http_port, cfg.retriever.metrics_port = (
        free_port(),
        free_port(),
        free_port(),
    )
    cfg.retriever.max_batch = 8
    cfg.security = security
    return cfg, serve(cfg)


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch):
    monkeypatch.delenv("SEARCHRL_TOKEN", raising=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A retriever with a bearer token, gRPC and HTTP on; yields (config, HTTP client with the token)."""
    tmp = tmp_path_factory.mktemp("http")
    cfg, server = _serve(tmp, with_token(tmp))
    with httpx.Client(
        base_url=f"http://127.0.0.1:{cfg.retriever.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    ) as client:
        yield cfg, client
    server.stop(0)


def _grpc(cfg, queries: list[str], k: int) -> list[list]:
    stub = retriever_pb2_grpc.RetrieverStub(channel(f"127.0.0.1:{cfg.retriever.port}", cfg.security))
    resp = stub.Search(retriever_pb2.SearchRequest(queries=queries, top_k=k), timeout=60)
    return [list(r.passages) for r in resp.results]


def test_r1_searcher_queries(served):
    cfg, client = served
    r = client.post("/queries", json={"queries": QUERIES, "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"queries", "answers"} and body["queries"] == QUERIES
    expected = [[f"{p.title}: {p.text}" for p in row] for row in _grpc(cfg, QUERIES, 2)]
    assert body["answers"] == expected
    default_k = client.post("/queries", json={"queries": QUERIES[:1]}).json()  # R1-Searcher's k defaults to 3
    assert len(default_k["answers"][0]) == 3


def test_search_r1_retrieve(served):
    cfg, client = served
    grpc_rows = _grpc(cfg, QUERIES, 2)
    r = client.post("/retrieve", json={"queries": QUERIES, "topk": 2, "return_scores": True})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert [[set(d) for d in row] for row in result] == [[{"document", "score"}] * 2] * 2
    for row, expected in zip(result, grpc_rows, strict=True):
        for d, p in zip(row, expected, strict=True):
            assert set(d["document"]) == {"id", "contents"}
            # Search-R1's corpus form: contents = '"Title"\ntext', read back by our corpus loader
            assert parse_passage(d["document"], "response") == parse_passage(
                {"id": p.id, "title": p.title, "text": p.text}, "grpc"
            )
            assert d["document"]["contents"].split("\n")[0] == f'"{p.title}"'
            assert d["score"] == pytest.approx(p.score, abs=1e-5)
    plain = client.post("/retrieve", json={"queries": QUERIES[:1]}).json()  # topk defaults to 3, no scores
    assert [[set(d) for d in row] for row in plain["result"]] == [[{"id", "contents"}] * 3]


def test_research_batch_search_and_health(served):
    cfg, client = served
    r = client.post("/batch_search", json={"query": QUERIES, "top_n": 2})
    assert r.status_code == 200, r.text
    docs = r.json()
    assert [[d["id"] for d in row] for row in docs] == [[p.id for p in row] for row in _grpc(cfg, QUERIES, 2)]
    assert all(set(d) == {"id", "contents"} for row in docs for d in row)
    docs2, scores = client.post(
        "/batch_search", json={"query": QUERIES, "top_n": 2, "return_score": True}
    ).json()
    assert docs2 == docs and len(scores) == 2 and scores[0][0] >= scores[0][1]
    health = httpx.get(f"http://127.0.0.1:{cfg.retriever.http_port}/health", timeout=10)  # no token needed
    assert health.status_code == 200 and health.json()["status"] == "healthy"


@pytest.mark.parametrize(
    "path, payload, field",
    [
        ("/queries", {"k": 3}, "queries"),
        ("/queries", {"queries": "not a list", "k": 3}, "queries"),
        ("/queries", {"queries": ["a", "  "], "k": 3}, "queries[1]"),
        ("/queries", {"queries": ["a"], "k": 0}, "k"),
        ("/queries", {"queries": ["a"] * 9}, "queries"),
        ("/retrieve", {"queries": ["a"], "topk": 51}, "topk"),
        ("/retrieve", {"queries": [1, "b"]}, "queries[0]"),
        ("/retrieve", {"queries": ["x" * 5000]}, "queries[0]"),
        ("/batch_search", {"query": [], "top_n": 2}, "query"),
        ("/batch_search", {"query": ["a"], "top_n": "many"}, "top_n"),
    ],
)
def test_bad_payloads_get_422_naming_the_field(served, path, payload, field):
    _, client = served
    r = client.post(path, json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field + ":"), r.json()


def test_undecodable_body_is_422_naming_the_body(served):
    _, client = served
    r = client.post("/queries", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body"), r.text


def test_token_required_except_health(served):
    cfg, _ = served
    base = f"http://127.0.0.1:{cfg.retriever.http_port}"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{base}/queries", json={"queries": ["a"]}, headers=headers, timeout=10)
        assert r.status_code == 401 and TOKEN not in r.text
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200


def test_http_goes_through_the_service_and_is_counted(served):
    cfg, client = served
    assert client.post("/queries", json={"queries": ["Tirabel"], "k": 1}).status_code == 200
    body = urllib.request.urlopen(f"http://127.0.0.1:{cfg.retriever.metrics_port}/metrics", timeout=10).read()
    line = next(
        x for x in body.decode().splitlines() if x.startswith('searchrl_retriever_queries_total{api="http"}')
    )
    assert float(line.split()[-1]) >= 1


def test_tls_and_mtls(tmp_path, certs):  # noqa: F811 - the imported fixture
    tls = {
        "tls_cert": str(certs / "node.pem"),
        "tls_key": str(certs / "node.key"),
        "tls_ca": str(certs / "ca.pem"),
    }
    trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    cfg, server = _serve(tmp_path, with_token(tmp_path, **tls))
    url = f"https://127.0.0.1:{cfg.retriever.http_port}/queries"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        r = httpx.post(url, json={"queries": ["Tirabel"], "k": 1}, headers=auth, verify=trust)
        assert r.status_code == 200 and len(r.json()["answers"][0]) == 1
        with pytest.raises(httpx.HTTPError):  # plain text against the TLS port
            httpx.post(url.replace("https", "http"), json={"queries": ["a"]}, headers=auth, timeout=5)
    finally:
        server.stop(0)
    cfg, server = _serve(tmp_path / "mtls", SecurityConfig(**tls, tls_client_auth=True))
    url = f"https://127.0.0.1:{cfg.retriever.http_port}/queries"
    try:
        mine = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        mine.load_cert_chain(str(certs / "node.pem"), str(certs / "node.key"))
        assert httpx.post(url, json={"queries": ["Tirabel"]}, verify=mine).status_code == 200
        with pytest.raises(httpx.HTTPError):  # no client certificate
            httpx.post(url, json={"queries": ["Tirabel"]}, verify=trust, timeout=5)
    finally:
        server.stop(0)


def test_http_and_grpc_requests_share_one_batch(tmp_path):
    """One HTTP and one gRPC request coalesce into one back-end batch (a batch of 2 queries closes when both are
    queued; the max wait is far longer than the test)."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import REGISTRY

    cfg = tiny_config_at(tmp_path / "run")
    cfg.retriever.port, cfg.retriever.http_port, cfg.retriever.metrics_port = free_port(), free_port(), 0
    cfg.retriever.batching.max_queries, cfg.retriever.batching.max_wait_ms = 2, 600_000
    server = serve(cfg)

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    before = (
        sample("searchrl_retriever_batch_requests_count"),
        sample("searchrl_retriever_batch_requests_sum"),
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            via_grpc = pool.submit(_grpc, cfg, ["Tirabel"], 1)
            via_http = pool.submit(
                httpx.post,
                f"http://127.0.0.1:{cfg.retriever.http_port}/queries",
                json={"queries": ["Lake Venn city"], "k": 1},
                timeout=60,
            )
            assert len(via_grpc.result(timeout=60)[0]) == 1 and via_http.result(timeout=60).status_code == 200
    finally:
        server.stop(0)
    after = sample("searchrl_retriever_batch_requests_count"), sample("searchrl_retriever_batch_requests_sum")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)
