"""`python -m searchrl.health`, the images' HEALTHCHECK, against the health port of a real gRPC server that
requires a token on its main port (health stays open and plain text)."""

from __future__ import annotations

import subprocess
import sys

from searchrl.config import SecurityConfig
from searchrl.grpcutil import Server
from searchrl.health import check
from searchrl.redisio import free_port


def test_health_check_against_a_real_server(monkeypatch) -> None:
    monkeypatch.setenv("SEARCHRL_TOKEN", "health-test-token-0123456789")
    server = Server(free_port(), 0, 2, SecurityConfig(), health_port=free_port())
    server.start(serving=False)
    addr = f"127.0.0.1:{server.health_port}"
    try:
        assert check(addr) == (False, f"{addr}: NOT_SERVING")
        server.set_serving(True)
        assert check(f"127.0.0.1:{server.port}")[0], "the main port answers health without a token too"
        r = subprocess.run(
            [sys.executable, "-m", "searchrl.health", addr], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0 and "SERVING" in r.stderr
        r = subprocess.run(
            [sys.executable, "-m", "searchrl.health"],
            env={"SEARCHRL_HEALTH_ADDR": addr, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
    finally:
        server.stop(0)
    ok, reason = check(addr, timeout=1)
    assert not ok and "UNAVAILABLE" in reason
    r = subprocess.run(
        [sys.executable, "-m", "searchrl.health", addr, "--timeout", "1"], capture_output=True, timeout=30
    )
    assert r.returncode == 1
