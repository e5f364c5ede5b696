"""The judge client over HTTP: what it sends and how replies and failures come back, against a loopback
OpenAI-shaped endpoint (an external API stands in; no project service is replaced), and one real round trip
through vLLM's OpenAI server on the tiny model."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from searchrl.evaluate import EvalRecord, judge_records, summarize
from searchrl.judge import JudgeClient, JudgeError, judge_prompt, local_judge_server
from searchrl.models import resolve_model


class _Endpoint(BaseHTTPRequestHandler):
    requests: list = []
    replies: dict = {}
    status = 200

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        prompt = body["messages"][0]["content"]
        reply = {
            "choices": [{"message": {"role": "assistant", "content": self.replies.get(prompt, "False")}}]
        }
        data = json.dumps(reply if self.status == 200 else {"error": "overloaded"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        ok = self.headers.get("Authorization") == "Bearer right"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    _Endpoint.requests, _Endpoint.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def _rec(question, pred):
    return EvalRecord(question, ["Paris"], "all", "r", pred, 0.0, 0.0, 0.0, 0, 0.0)


def test_judge_sends_the_seeds_prompt_and_aggregates_exact_true(endpoint):
    records = [_rec("Capital of France?", "Paris"), _rec("Capital?", "paris."), _rec("Q?", None)]
    _Endpoint.replies = {
        judge_prompt("Capital of France?", ["Paris"], "Paris"): "True",
        judge_prompt("Capital?", ["Paris"], "paris."): "True.",  # the seed counts only the exact string
    }
    judge_records(records, JudgeClient(endpoint, "gpt-4o-mini", api_key="k-123", concurrency=2))
    assert [r.judge for r in records] == [1.0, 0.0, 0.0]
    assert [r.judge_output for r in records] == ["True", "True.", "False"]
    assert summarize(records)["all"]["judge"] == pytest.approx(1 / 3)
    path, auth, body = _Endpoint.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k-123"
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 1024
    sent = {r[2]["messages"][0]["content"] for r in _Endpoint.requests}
    assert judge_prompt("Q?", ["Paris"], None) in sent and all(
        len(r[2]["messages"]) == 1 for r in _Endpoint.requests
    )


def test_judge_errors_name_the_url(endpoint):
    _Endpoint.status = 503
    with pytest.raises(JudgeError, match=rf"{endpoint}/chat/completions: HTTP 503"):
        JudgeClient(endpoint, "m").complete("x")
    down = "http://127.0.0.1:9/v1"
    with pytest.raises(JudgeError, match=rf"judge endpoint {down}/chat/completions is unreachable"):
        JudgeClient(down, "m", timeout_s=5).complete("x")


def test_check_refuses_a_wrong_key_before_any_judging(endpoint):
    JudgeClient(endpoint, "m", api_key="right").check()
    with pytest.raises(JudgeError, match=rf"{endpoint}/models: HTTP 401 \(check the API key\)"):
        JudgeClient(endpoint, "m", api_key="wrong").check()


@pytest.mark.slow
def test_real_round_trip_through_a_local_vllm_server(tmp_path):
    path = resolve_model("builtin:tiny-searcher")
    with local_judge_server(path, tmp_path / "judge.log", max_model_len=1024) as url:
        records = [_rec("Capital of France?", "Paris")]
        judge_records(records, JudgeClient(url, "judge"))
    assert records[0].judge in (0.0, 1.0) and isinstance(records[0].judge_output, str)
    assert "judge.log" in str(list(tmp_path.iterdir())[0])
