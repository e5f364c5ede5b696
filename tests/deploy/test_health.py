"""`python -m searchrl.health`, the images' HEALTHCHECK, against a real gRPC server with grpc.health.v1."""

from __future__ import annotations

import subprocess
import sys

from searchrl.config import SecurityConfig
from searchrl.grpcutil import Server
from searchrl.health import check
from searchrl.redisio import free_port


def test_health_check_against_a_real_server() -> None:
    server = Server(free_port(), 0, 2, SecurityConfig())
    server.start(serving=False)
    addr = f"127.0.0.1:{server.port}"
    try:
        assert check(addr) == (False, f"{addr}: NOT_SERVING")
        server.set_serving(True)
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
