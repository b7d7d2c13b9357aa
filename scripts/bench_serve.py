"""Load benchmark of ``twotower-serve``: a bounded load generator on loopback.

Starts ``twotower-serve EXPORT`` on a free 127.0.0.1 port (or uses ``--url``), then for each
concurrency in ``--concurrency`` runs that many client threads, each with one persistent
HTTP/1.1 connection, sending single-user ``POST /recommend`` requests for random known users
(``k``, seen items left out) until ``--duration`` seconds or ``--max-requests`` requests,
after ``--warmup`` requests. Reports requests per second and p50 / p95 / p99 latency (ms),
measured from just before sending to the end of reading the answer. The clients run on
the same machine as the server: their own CPU time competes with it (say so with the figures).

    .venv/bin/python scripts/bench_serve.py EXPORT_DIR --concurrency 1,8,32 --duration 20 --out /tmp/serve.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export_dir: str, threads: int, workers: int) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    command = [sys.executable, "-m", "twotower.serve", export_dir, "--port", str(port), "--threads", str(threads),
               "--workers", str(workers)]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a 1M-item export takes a while to load
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, "127.0.0.1", port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer /health in 600 s")


def run_level(host: str, port: int, users: list[str], concurrency: int, k: int, duration: float, max_requests: int, warmup: int) -> dict:
    """``concurrency`` threads sending requests until the time or the request budget runs out."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    budget = [max_requests + warmup]
    stop_at = [0.0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        sent = 0
        while True:
            with lock:
                if budget[0] <= 0 or (stop_at[0] and time.perf_counter() > stop_at[0]):
                    break
                budget[0] -= 1
            body = json.dumps({"user_id": rng.choice(users), "k": k})
            start = time.perf_counter()
            conn.request("POST", "/recommend", body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            sent += 1
            if response.status != 200:
                with lock:
                    errors[0] += 1
            if sent > warmup // concurrency:
                mine.append(elapsed)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    stop_at[0] = started + duration
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": errors[0], "seconds": wall,
        "rps": len(latencies) / wall, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "mean_ms": 1000 * statistics.fmean(latencies),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export_dir")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level (at most)")
    p.add_argument("--max-requests", type=int, default=20000, help="requests per level (at most)")
    p.add_argument("--warmup", type=int, default=200, help="requests per level not timed")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="the server's torch / FAISS threads")
    p.add_argument("--workers", type=int, default=1, help="the server's worker processes")
    p.add_argument("--out", help="JSON file for the figures")
    args = p.parse_args(argv)
    users = [str(u) for u in json.loads((Path(args.export_dir) / "user_ids.json").read_text())]
    index = json.loads((Path(args.export_dir) / "index" / "manifest.json").read_text())
    proc, host, port = start_server(args.export_dir, args.threads, args.workers)
    results = []
    try:
        for level in [int(c) for c in args.concurrency.split(",")]:
            res = run_level(host, port, users, level, args.k, args.duration, args.max_requests, args.warmup)
            results.append(res)
            print(f"{index['kind']:>6} {index['count']:>9,} items  c={level:<3} {res['rps']:8.1f} req/s  p50 {res['p50_ms']:6.2f}  "
                  f"p95 {res['p95_ms']:6.2f}  p99 {res['p99_ms']:6.2f} ms  ({res['requests']} requests, {res['errors']} errors)", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if args.out:
        doc = {"export": str(args.export_dir), "index": {"kind": index["kind"], "params": index["params"], "count": index["count"]},
               "k": args.k, "server": {"threads": args.threads, "workers": args.workers}, "cpu_count": os.cpu_count(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), "results": results}  # fmt: skip
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
