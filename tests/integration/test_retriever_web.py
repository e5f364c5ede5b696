"""The web search back end (issue 9) against a local HTTP server that answers in SerpApi's documented Google
Search format (organic_results with position/title/link/snippet; errors as {"error": ...})."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from searchrl.config import WebConfig
from searchrl.grpcutil import channel
from searchrl.proto import retriever_pb2, retriever_pb2_grpc
from searchrl.redisio import free_port
from searchrl_retriever.backend import open_backend
from searchrl_retriever.server import serve
from searchrl_retriever.web import WebSearchError, read_key
from tests.conftest import tiny_config_at

KEY = "serpapi-test-key-0123456789"


class SerpApiReplay(BaseHTTPRequestHandler):
    """GET /search.json as SerpApi answers it: three organic results per query, 'nothing' has none."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
        self.seen.append(params)
        if params.get("api_key") != KEY:
            return self._answer(401, {"error": "Invalid API key. Your API key should be here: ..."})
        if params["q"] == "nothing":
            return self._answer(200, {"error": "Google hasn't returned any results for this query."})
        results = [
            {
                "position": i,
                "title": f"{params['q']} result {i}",
                "link": f"https://example.org/{i}",
                "displayed_link": f"example.org › {i}",
                "snippet": f"snippet {i} about {params['q']}",
            }
            for i in (1, 2, 3)
        ]
        self._answer(200, {"search_metadata": {"status": "Success"}, "organic_results": results})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def provider():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SerpApiReplay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/search.json"
    server.shutdown()


@pytest.fixture()
def web_config(provider, tmp_path, monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    cfg = tiny_config_at(tmp_path / "run")
    cfg.retriever.mode = "web"
    cfg.retriever.web.endpoint = provider
    return cfg


def test_hits_come_from_the_providers_organic_results(web_config) -> None:
    SerpApiReplay.seen.clear()
    backend = open_backend(web_config)
    rows = backend.search_batch(["Bamboogle question", "nothing"], 2)
    assert [(h.passage.id, h.passage.title, h.passage.text, h.score) for h in rows[0]] == [
        ("https://example.org/1", "Bamboogle question result 1", "snippet 1 about Bamboogle question", 1.0),
        ("https://example.org/2", "Bamboogle question result 2", "snippet 2 about Bamboogle question", 0.5),
    ]
    assert rows[1] == [] and not rows.partial
    asked = sorted(SerpApiReplay.seen, key=lambda p: p["q"])[0]
    assert (asked["engine"], asked["num"], asked["api_key"]) == ("google", "2", KEY)


def test_over_grpc(web_config) -> None:
    web_config.retriever.port, web_config.retriever.metrics_port = free_port(), free_port()
    server = serve(web_config)
    try:
        with channel(f"127.0.0.1:{web_config.retriever.port}", web_config.security) as ch:
            stub = retriever_pb2_grpc.RetrieverStub(ch)
            response = stub.Search(retriever_pb2.SearchRequest(queries=["who won"], top_k=3), timeout=30)
            info = stub.Info(retriever_pb2.InfoRequest(), timeout=30)
    finally:
        server.stop(0)
    assert [p.id for p in response.results[0].passages] == [f"https://example.org/{i}" for i in (1, 2, 3)]
    assert (info.device, info.embedder) == ("web", "serpapi:google")


def test_the_key_comes_from_a_file_or_the_env_and_never_shows(web_config, tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "serpapi-key"
    key_file.write_text("wrong-key-from-the-secret\n")
    assert read_key(WebConfig(key_file=str(key_file))) == "wrong-key-from-the-secret", "the file wins"
    web_config.retriever.web.key_file = str(key_file)
    with pytest.raises(WebSearchError, match=r"HTTP 401: Invalid API key\.") as e:
        open_backend(web_config).search_batch(["q"], 1)
    assert "wrong-key" not in str(e.value)
    monkeypatch.delenv("SERPAPI_API_KEY")
    with pytest.raises(ValueError, match="retriever.web.key_file or the env var SERPAPI_API_KEY"):
        read_key(WebConfig())


def test_an_unreachable_provider_is_a_clear_grpc_error(web_config) -> None:
    web_config.retriever.web.endpoint = f"http://127.0.0.1:{free_port()}/search.json"
    web_config.retriever.port, web_config.retriever.metrics_port = free_port(), free_port()
    server = serve(web_config)
    try:
        with channel(f"127.0.0.1:{web_config.retriever.port}", web_config.security) as ch:
            stub = retriever_pb2_grpc.RetrieverStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.Search(retriever_pb2.SearchRequest(queries=["q"], top_k=1), timeout=30)
    finally:
        server.stop(0)
    assert "web search:" in e.value.details() and KEY not in e.value.details()
