"""Retriever throughput under concurrent clients: the service (dynamic batching) vs a baseline server written the
way R1-Searcher's Flask retriever is (each request encoded on its own, FAISS Flat, a thread per request) vs the
limit (one in-process encode + search of all C x B concurrent queries at once, no network).

Setup: the demo world's corpus (searchrl.demo.prepare_world, seed 0), configs/demo-cpu.yaml's embedder, its questions
as queries (distinct, so the query cache, off by default, could not help anyway). C closed-loop clients (threads
here), each sending requests of B queries, for `--seconds` per point; the servers run in their own processes.
Ratios are measured in one run, points interleaved. Writes the table to --out (markdown) and prints it.

Usage: python bench/retriever_throughput.py [--seconds 10] [--clients 1 8 32] [--batch 1 4]
       [--service 2:0 2:0:eager] [--repeats 1] [--out bench/results/retriever-throughput.md]
The same file runs the servers: --serve baseline|service --port P (internal).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from searchrl.config import Config, load_config
from searchrl.redisio import free_port

ROOT = Path(__file__).resolve().parents[1]


def bench_config(
    batcher_threads: int = 1, torch_threads: int = 0, max_wait_ms: float | None = None, trace: bool = True
) -> Config:
    from searchrl.demo import demo_config, prepare_world

    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml")
    cfg = demo_config(cfg, prepare_world(cfg, 0, 300), Path("/tmp/searchrl-bench-retriever"), None, None)
    cfg.retriever.metrics_port = 0
    cfg.retriever.batching.threads = batcher_threads
    cfg.retriever.batching.torch_threads = torch_threads
    if max_wait_ms is not None:
        cfg.retriever.batching.max_wait_ms = max_wait_ms
    cfg.retriever.trace_encoder = trace
    return cfg


def variant_config(variant: str) -> Config:
    """threads:torch_threads[:max_wait_ms][:eager] -> the service's config (eager: retriever.trace_encoder off)."""
    parts = variant.split(":")
    eager = parts[-1] == "eager"
    threads, torch_threads, *wait = parts[:-1] if eager else parts
    return bench_config(int(threads), int(torch_threads), float(wait[0]) if wait else None, not eager)


def queries() -> list[str]:
    from searchrl.demo import prepare_world

    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml")
    world = prepare_world(cfg, 0, 300)
    out = []
    for name in ("test", "stage1", "stage2"):
        out += [json.loads(line)["question"] for line in world[name].read_text().splitlines()]
    return out


# ---- the servers (run in their own processes) ----


def serve_baseline(cfg: Config, port: int) -> None:
    """R1-Searcher's retriever: POST /queries {"queries", "k"} -> {"queries", "answers"}; each request encodes its
    own queries and searches FAISS Flat on its own thread, with no lock and no batching across requests."""
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server

    from searchrl_retriever.backend import build_dense

    index, embedder = build_dense(cfg, progress=False)
    app = Flask("baseline")

    @app.post("/queries")
    def answer():  # noqa: ANN202
        data = request.json
        rows = index.search(embedder.encode_queries(data["queries"]), data.get("k", 3))
        return jsonify(
            {"queries": data["queries"], "answers": [[p.as_document() for p, _ in r] for r in rows]}
        )

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def serve_service(cfg: Config, port: int, http_port: int) -> None:
    from searchrl_retriever.server import serve

    cfg.retriever.port, cfg.retriever.http_port = port, http_port
    server = serve(cfg)  # keep the reference: a collected grpc.Server stops serving
    threading.Event().wait()
    server.stop()


# ---- the clients ----


def run_clients(call, clients: int, batch: int, qs: list[str], seconds: float) -> dict:  # noqa: ANN001
    """C closed-loop clients for `seconds`; queries/s and request latency percentiles (ms)."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        do = call()
        n = i * 997
        start.wait()
        while time.monotonic() < stop:
            req = [qs[(n + j) % len(qs)] for j in range(batch)]
            n += batch
            t0 = time.perf_counter()
            do(req)
            lat[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    all_lat = np.array([x for row in lat for x in row]) * 1000
    return {
        "qps": len(all_lat) * batch / wall,
        "p50": float(np.percentile(all_lat, 50)),
        "p99": float(np.percentile(all_lat, 99)),
    }


def http_caller(port: int):  # noqa: ANN201
    import requests

    def make():  # noqa: ANN202
        session = requests.Session()
        return lambda qs: session.post(
            f"http://127.0.0.1:{port}/queries", json={"queries": qs, "k": 3}
        ).json()

    return make


def grpc_caller(port: int, security):  # noqa: ANN001, ANN201
    from searchrl.grpcutil import channel
    from searchrl.proto import retriever_pb2, retriever_pb2_grpc

    def make():  # noqa: ANN202
        stub = retriever_pb2_grpc.RetrieverStub(channel(f"127.0.0.1:{port}", security))
        return lambda qs: stub.Search(retriever_pb2.SearchRequest(queries=qs, top_k=3), timeout=60)

    return make


def limit(index, embedder, clients: int, batch: int, qs: list[str], seconds: float) -> dict:  # noqa: ANN001
    """All C x B queries encoded and searched at once, in this process, repeatedly; the best of torch's default
    intra-op threads and 1 thread (on a busy CPU the default can be several times slower)."""
    import torch

    default, best = torch.get_num_threads(), None
    for threads in sorted({default, 1}):
        torch.set_num_threads(threads)
        n, done, times, t0 = clients * batch, 0, [], time.monotonic()
        while time.monotonic() - t0 < seconds / 2 or not times:
            req = [qs[(done + j) % len(qs)] for j in range(n)]
            t1 = time.perf_counter()
            index.search(embedder.encode_queries(req), 3)
            times.append(time.perf_counter() - t1)
            done += n
        point = {"qps": done / sum(times), "p50": float(np.median(times)) * 1000, "torch_threads": threads}
        point["p99"] = float(np.percentile(times, 99)) * 1000
        if best is None or point["qps"] > best["qps"]:
            best = point
    torch.set_num_threads(default)
    return best


def start(args: list[str], wait_port: int) -> subprocess.Popen:
    import socket

    proc = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", wait_port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"server {args} did not listen on {wait_port}")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument(
        "--service",
        nargs="+",
        default=["2:0", "2:0:eager"],
        help="service variants as batching.threads:batching.torch_threads[:batching.max_wait_ms][:eager] (torch "
        "threads 0 = the config's rule, cores // threads; no max wait = the config's; eager = "
        "retriever.trace_encoder off)",
    )
    p.add_argument("--repeats", type=int, default=1, help="measure every point this often, keep the best")
    p.add_argument("--out", default="")
    p.add_argument("--serve", choices=["baseline", "service"])
    p.add_argument("--port", type=int)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--variant", default="1:0")
    a = p.parse_args()
    if a.serve:
        cfg = variant_config(a.variant)
        serve_baseline(cfg, a.port) if a.serve == "baseline" else serve_service(cfg, a.port, a.http_port)
        return

    from searchrl_retriever.backend import build_dense

    cfg = bench_config()
    index, embedder = build_dense(cfg, progress=True)  # built once; the servers load it
    qs = queries()
    load_before = load()
    procs, systems = [], {}
    try:
        port = free_port()
        procs.append(start(["--serve", "baseline", "--port", str(port)], port))
        systems["baseline"] = http_caller(port)
        for variant in a.service:
            port, http_port = free_port(), free_port()
            args = [
                "--serve",
                "service",
                "--port",
                str(port),
                "--http-port",
                str(http_port),
                "--variant",
                variant,
            ]
            procs.append(start(args, http_port))
            systems[f"service {variant} gRPC"] = grpc_caller(port, cfg.security)
            systems[f"service {variant} HTTP"] = http_caller(http_port)
        for make in systems.values():  # warm up every server
            run_clients(make, 2, 4, qs, 1.0)
        points = {(c, b): {"clients": c, "batch": b} for b in a.batch for c in a.clients}
        for _ in range(a.repeats):  # interleaved, so that a burst of load elsewhere hits every system alike
            for (clients, batch), point in points.items():
                measured = {"limit": limit(index, embedder, clients, batch, qs, a.seconds)}
                for name, make in systems.items():
                    measured[name] = run_clients(make, clients, batch, qs, a.seconds)
                for name, m in measured.items():
                    if name not in point or m["qps"] > point[name]["qps"]:
                        point[name] = m
                print(json.dumps(point), flush=True)
        rows = list(points.values())
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    report = table(rows, list(systems), a.seconds, a.repeats, load_before, load())
    print(report)
    if a.out:
        Path(a.out).write_text(report)


def table(
    rows: list[dict], systems: list[str], seconds: float, repeats: int, load_before: str, load_after: str
) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    services = [s for s in systems if s.startswith("service")]

    def header(cols: list[str]) -> list[str]:
        return ["| C | B | " + " | ".join(cols) + " |", "|" + "---|" * (2 + len(cols))]

    lines = [
        "# Retriever throughput (bench/retriever_throughput.py)",
        "",
        f"Commit {commit.stdout.strip()}, {os.cpu_count()} CPUs, {seconds:.0f} s per point, demo-world corpus "
        f"(2535 passages, FAISS Flat), all-MiniLM-L6-v2 (TorchScript trace: retriever.trace_encoder, in the limit "
        f"and the baseline too), k=3; load average before {load_before}, after {load_after}. C closed-loop clients "
        "send B queries per request. Service variants are batching.threads:batching.torch_threads"
        "[:batching.max_wait_ms][:eager] (0 = cores // threads; eager = the untraced model); the limit is the best "
        "of torch's default threads and 1 (threads used in brackets). Ratios are from this one run"
        + (f", each point the best of {repeats}." if repeats > 1 else "."),
        "",
        "Queries/s:",
        "",
        *header(["limit", *systems]),
    ]
    for r in rows:
        lim = r["limit"]
        cells = [f"{lim['qps']:.0f} ({lim['torch_threads']})", *(f"{r[s]['qps']:.0f}" for s in systems)]
        lines.append(f"| {r['clients']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios:", "", *header(["limit / baseline", *(f"{s} / limit" for s in services)])]
    for r in rows:
        cells = [f"{r['limit']['qps'] / r['baseline']['qps']:.2f}"]
        cells += [f"{r[s]['qps'] / r['limit']['qps']:.2f} ({r[s]['qps'] / r['baseline']['qps']:.2f}x baseline)"
                  for s in services]  # fmt: skip
        lines.append(f"| {r['clients']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += ["", "Request latency p50 / p99 (ms):", "", *header(systems)]
    for r in rows:
        cells = [f"{r[s]['p50']:.0f} / {r[s]['p99']:.0f}" for s in systems]
        lines.append(f"| {r['clients']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Latency goal: p99 at 8 clients < 2x the single-request latency (p50 at 1 client, same B):",
        "",
    ]
    for batch in sorted({r["batch"] for r in rows}):
        one = next((r for r in rows if r["batch"] == batch and r["clients"] == 1), None)
        eight = next((r for r in rows if r["batch"] == batch and r["clients"] == 8), None)
        if one and eight:
            for s in systems:
                ratio = eight[s]["p99"] / one[s]["p50"]
                lines.append(f"- B={batch}, {s}: p99(8) {eight[s]['p99']:.0f} ms / p50(1) {one[s]['p50']:.0f} ms"
                             f" = {ratio:.2f}x")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
