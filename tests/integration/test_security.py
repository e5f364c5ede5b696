"""Security and honest health against real gRPC servers on loopback sockets.

- A server with a token refuses calls without it or with a wrong one (UNAUTHENTICATED), health stays open, and
  neither the error nor the log shows the token.
- Without a credential a server binds loopback only (and says so); another address needs `security.insecure`.
- TLS and mTLS with real certificates (openssl).
- Health on its own port answers while long GetWeights streams hold every worker thread; GetWeights streams are
  capped (RESOURCE_EXHAUSTED beyond trainer.max_weight_streams).
- `searchrl up`'s preparation: loopback bind, a random token, no secret in config.yaml, the log or the output.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import subprocess
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from searchrl.config import ConfigError, SecurityConfig, load_config, read_token
from searchrl.grpcutil import Server, channel, is_serving, wait_serving
from searchrl.proto import reward_pb2, reward_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from searchrl.redisio import free_port
from searchrl.weightsync import WeightStore
from searchrl_reward.scorer import RewardScorer
from searchrl_reward.server import RewardServicer
from searchrl_trainer.server import TrainerServicer

TOKEN = "test-token-0123456789abcdef"
SCORE = reward_pb2.ScoreRequest(
    preset="r1s-stage1", items=[reward_pb2.ScoreItem(question="q", response="r", golden_answers=["a"])]
)


def with_token(tmp_path: Path, token: str = TOKEN, **fields) -> SecurityConfig:
    f = tmp_path / f"token-{token}"
    f.write_text(token)
    return SecurityConfig(token_file=str(f), **fields)


def reward_server(security: SecurityConfig, workers: int = 2) -> Server:
    server = Server(free_port(), 0, workers, security, health_port=free_port())
    server.add(reward_pb2_grpc.add_RewardServicer_to_server, RewardServicer(RewardScorer(8, 1000)), "r")
    server.start()
    return server


def health(address: str, ch_security: SecurityConfig | None = None) -> int:
    ch = channel(address, ch_security) if ch_security else grpc.insecure_channel(address)
    with ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch):
    monkeypatch.delenv("SEARCHRL_TOKEN", raising=False)


def test_token_required_health_open_and_no_secret_leaks(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sec = with_token(tmp_path)
    server = reward_server(sec)
    addr = f"localhost:{server.port}"
    try:
        assert server.host == "[::]", "a credential is configured: all interfaces"
        assert reward_pb2_grpc.RewardStub(channel(addr, sec)).Score(SCORE, timeout=10).scores[
            0
        ].format_ok in (
            True,
            False,
        )
        nobody = SecurityConfig()  # no token at all
        wrong = with_token(tmp_path, token="wrong-token-0123456789abcdef")
        for client in (nobody, wrong):
            with pytest.raises(grpc.RpcError) as e:
                reward_pb2_grpc.RewardStub(channel(addr, client)).Score(SCORE, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "security.token_file" in e.value.details() and TOKEN not in e.value.details()
        # a streaming method is guarded the same way
        trainer = Server(free_port(), 0, 2, sec)
        trainer.add(
            trainer_pb2_grpc.add_TrainerServicer_to_server,
            TrainerServicer(None, WeightStore(1024), max_streams=2),
            "t",
        )
        trainer.start()
        try:
            stream = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{trainer.port}", nobody)).GetWeights(
                trainer_pb2.WeightsRequest(min_version=0), timeout=10
            )
            with pytest.raises(grpc.RpcError) as e:
                next(stream)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            trainer.stop(0)
        # health stays open, on the main port and on the health port
        assert health(addr, nobody) == health_pb2.HealthCheckResponse.SERVING
        assert health(f"127.0.0.1:{server.health_port}") == health_pb2.HealthCheckResponse.SERVING
        assert is_serving(addr, nobody)
    finally:
        server.stop(0)
    assert TOKEN not in caplog.text


def test_without_credential_loopback_only_unless_insecure(caplog) -> None:
    caplog.set_level(logging.INFO)
    server = reward_server(SecurityConfig())
    try:
        assert server.host == "127.0.0.1"
        assert "loopback" in caplog.text and "security.token_file" in caplog.text
        assert is_serving(f"127.0.0.1:{server.port}", SecurityConfig())
        other = _non_loopback_ip()
        if other:
            with pytest.raises(OSError):
                socket.create_connection((other, server.port), timeout=2).close()
    finally:
        server.stop(0)
    with pytest.raises(ConfigError, match="security.bind_host.*security.insecure"):
        Server(free_port(), 0, 1, SecurityConfig(bind_host="0.0.0.0"))
    caplog.clear()
    server = Server(free_port(), 0, 1, SecurityConfig(bind_host="0.0.0.0", insecure=True))
    try:
        assert server.host == "0.0.0.0" and "WITHOUT authentication" in caplog.text
    finally:
        server.stop(0)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def _non_loopback_ip() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA and a node certificate (127.0.0.1, localhost; server and client use) signed by it, plus a second CA."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl binary")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run(
            *f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={ca} -keyout {ca}.key -out {ca}.pem".split()
        )
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    run(*"req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout node.key -out node.csr".split())
    run(
        *"x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf".split(),
        "-out",
        "node.pem",
    )
    return d


def test_tls_and_mtls(tmp_path, certs) -> None:
    tls = {
        "tls_cert": str(certs / "node.pem"),
        "tls_key": str(certs / "node.key"),
        "tls_ca": str(certs / "ca.pem"),
    }
    sec = with_token(tmp_path, **tls)
    server = reward_server(sec)
    addr = f"127.0.0.1:{server.port}"
    try:
        assert reward_pb2_grpc.RewardStub(channel(addr, sec)).Score(SCORE, timeout=10).scores
        with pytest.raises(grpc.RpcError) as e:  # plain text against a TLS port
            reward_pb2_grpc.RewardStub(channel(addr, with_token(tmp_path))).Score(SCORE, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        untrusted = with_token(tmp_path, **{**tls, "tls_ca": str(certs / "other-ca.pem")})
        with pytest.raises(grpc.RpcError) as e:  # the server's certificate is not signed by the client's CA
            reward_pb2_grpc.RewardStub(channel(addr, untrusted)).Score(SCORE, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # the health port stays plain text for kubelet probes
        assert health(f"127.0.0.1:{server.health_port}") == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)
    # mTLS alone is a credential: no token, all interfaces, a client without a certificate is refused
    mtls = SecurityConfig(**tls, tls_client_auth=True)
    server = reward_server(mtls)
    addr = f"127.0.0.1:{server.port}"
    try:
        assert server.host == "[::]"
        assert reward_pb2_grpc.RewardStub(channel(addr, mtls)).Score(SCORE, timeout=10).scores
        with pytest.raises(grpc.RpcError) as e:
            reward_pb2_grpc.RewardStub(channel(addr, SecurityConfig(**tls))).Score(SCORE, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def _open_weight_stream(stub: trainer_pb2_grpc.TrainerStub) -> grpc.Future:
    """A GetWeights stream whose client reads one chunk and then stops reading: the server thread blocks."""
    stream = stub.GetWeights(trainer_pb2.WeightsRequest(min_version=0), timeout=60)
    next(stream)
    return stream


def test_health_answers_while_weight_streams_hold_every_thread(tmp_path) -> None:
    """Finding 6: trainer.workers=2 and two open slow GetWeights streams; health Check(timeout=2) is SERVING."""
    sec = with_token(tmp_path)
    store = WeightStore(1 << 20)
    store.publish(0, bytes(256 << 20))  # far more than the HTTP/2 windows hold
    server = Server(free_port(), 0, 2, sec, health_port=free_port())
    server.add(
        trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store, max_streams=2), "t"
    )
    server.start()
    stub = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{server.port}", sec))
    streams = [_open_weight_stream(stub) for _ in range(2)]
    try:
        assert health(f"127.0.0.1:{server.health_port}") == health_pb2.HealthCheckResponse.SERVING
        assert health(f"127.0.0.1:{server.health_port}") == health_pb2.HealthCheckResponse.SERVING
    finally:
        for s in streams:
            s.cancel()
        server.stop(0)


def test_weight_streams_are_capped(tmp_path) -> None:
    sec = with_token(tmp_path)
    store = WeightStore(1 << 20)
    store.publish(0, bytes(256 << 20))
    server = Server(free_port(), 0, 4, sec)
    server.add(
        trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(None, store, max_streams=1), "t"
    )
    server.start()
    stub = trainer_pb2_grpc.TrainerStub(channel(f"127.0.0.1:{server.port}", sec))
    try:
        first = _open_weight_stream(stub)
        with pytest.raises(grpc.RpcError) as e:
            _open_weight_stream(stub)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "trainer.max_weight_streams" in e.value.details()
        first.cancel()
        # the slot comes back once the stream ends (the callback runs on cancellation)
        wait_serving([f"127.0.0.1:{server.port}"], sec, 10)
        for _ in range(50):
            try:
                _open_weight_stream(stub).cancel()
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            raise AssertionError("the GetWeights slot was never released")
    finally:
        server.stop(0)


def test_up_binds_loopback_with_a_random_token_and_leaks_no_secret(tmp_path, capsys) -> None:
    """An up-run (its preparation and a real `searchrl serve reward` child): loopback only, token required, no
    secret in config.yaml, the service log or the printed lines."""
    from searchrl.launcher import prepare

    cfg = load_config(None)
    cfg.run.run_dir = str(tmp_path / "run")
    stack = prepare(cfg)
    try:
        url = cfg.addresses.redis_url
        assert stack.redis is not None and url.startswith("redis://:")
        redis_pw = url.split("://:", 1)[1].split("@", 1)[0]
        token = read_token(cfg.security)
        assert len(token) >= 32 and cfg.security.bind_host == "127.0.0.1"
        token_file = Path(cfg.security.token_file)
        assert token_file.stat().st_mode & 0o077 == 0, "the token file is private to the user"
        written = (stack.run_dir / "config.yaml").read_text()
        assert redis_pw not in written and token not in written
        proc = stack.start_service("reward", stack.run_dir / "config.yaml")
        addr = cfg.addresses.reward
        wait_serving([addr], cfg.security, 120, alive=lambda: proc.poll() is None)
        listening = {
            c.laddr.ip for c in psutil.Process(proc.pid).net_connections("inet") if c.status == "LISTEN"
        }
        assert listening and all(_loopback(ip) for ip in listening), listening
        assert reward_pb2_grpc.RewardStub(channel(addr, cfg.security)).Score(SCORE, timeout=10).scores
        with pytest.raises(grpc.RpcError) as e:
            reward_pb2_grpc.RewardStub(channel(addr, SecurityConfig())).Score(SCORE, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stack.stop(timeout=10)
    log = (stack.run_dir / "logs" / "reward.log").read_text()
    out = capsys.readouterr()
    for text in (log, out.out, out.err):
        assert redis_pw not in text and token not in text
