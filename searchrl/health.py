"""`python -m searchrl.health [ADDR] [--service NAME] [--timeout S]`: a grpc.health.v1 check for container
HEALTHCHECKs and exec probes where no grpc_health_probe binary is available.

Exit status 0 when the server at ADDR (default: $SEARCHRL_HEALTH_ADDR, else localhost:50061) answers SERVING,
1 otherwise, with one line on stderr saying why. ADDR is a service's `health_port`: plain text and open (no
token, no TLS), served from its own threads, so the answer does not wait behind long RPCs (searchrl/grpcutil.py).
Kubernetes uses its native `grpc:` probes on the same port instead (Helm chart); this module imports only grpc
so that a check every few seconds stays cheap. It knows nothing about the services.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving, reason) for one Check call; never raises on a gRPC error."""
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as e:
        return False, f"{address}: {e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m searchrl.health", description=__doc__.split("\n\n")[0])
    p.add_argument("address", nargs="?", default=os.environ.get("SEARCHRL_HEALTH_ADDR", "localhost:50061"))
    p.add_argument("--service", default="", help="health service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    ok, reason = check(args.address, args.service, args.timeout)
    print(reason, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
