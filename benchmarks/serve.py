"""`factory serve` under load: throughput and latency of /predict, batching, hot swap, bad input.

    python benchmarks/serve.py                                # 2,000 requests per measurement
    python benchmarks/serve.py --requests 400 --clients 1 8   # shorter

In a throw-away datastore it runs a first cycle of a digits search (one MLP trial: the first
champion), then starts `factory serve` on a free loopback port, without dynamic batching and
with it, and for each sends `--requests` single-row requests (rows of the held-out split)
from 1, 8 and 64 concurrent clients (threads, one keep-alive connection each, each request
sent as soon as its previous one is answered). It reports throughput and p50/p99 latency
beside in-process onnxruntime on the same rows (the limit: no HTTP, no JSON), one row per
call and 64 per call. Then, with batching on and 8 clients sending, it runs the second cycle
(a stronger trial, promoted) and counts failed requests across the hot swap, with the p99
while it happened; and it sends 1,000 malformed requests and checks the server still
answers /health. It prints a JSON report, then a markdown table for docs/benchmarks.md.

The clients run on the same machine as the server and share its cores: on a small machine
the figures are a floor, not the server alone. All traffic stays on 127.0.0.1, and the script
stops the servers it started.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "cycle.py"
NAME = "serve_bench"
WEAK = {"lr": 0.001, "width": 4, "depth": 1}
STRONG = {"lr": 0.03, "width": 32, "depth": 2}
MALFORMED = 1000


def write_objective(folder: Path) -> Path:
    """Digits, an MLP search whose first two trials are given: weak, then strong."""
    spec = yaml.safe_load((ROOT / "objectives" / "smoke.yaml").read_text())
    spec["name"] = NAME
    spec["data"] = {"dataset": "digits", "val_fraction": 0.15, "test_fraction": 0.2, "seed": 0}
    spec["reward"]["constraints"] = ["params <= 100000"]
    spec["budget"]["trials_per_cycle"] = 1
    spec["proposers"] = {"enqueue": [WEAK, STRONG]}
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cycle(objective: Path, env: dict[str, str]) -> None:
    command = [sys.executable, str(FLOW), "--config", "objective", str(objective), "run"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the cycle failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`factory serve` in a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path, *options: str) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "factory_lib.ops.cli", "serve", "--objective", NAME]
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port), "--no-sample", *options],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"factory serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(
    port: int,
    bodies: list[bytes],
    clients: int,
    keep_going: Callable[[int], bool] | None = None,
    pause_s: float = 0.0,
) -> dict[str, Any]:
    """Send `bodies` from `clients` threads (or, with `keep_going`, until it says stop, within
    the bodies' count), each pausing `pause_s` between requests; latencies, statuses and
    models answered."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    models: list[str] = []
    lock = threading.Lock()
    next_index = [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies) or (keep_going is not None and not keep_going(i)):
                break
            if pause_s:
                time.sleep(pause_s)
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", bodies[i], {"Content-Type": "application/json"})
                answer = conn.getresponse()
                text = answer.read()
                status = str(answer.status)
            except (OSError, http.client.HTTPException) as exc:
                status, text = type(exc).__name__, b"{}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    models.append(json.loads(text)["model"])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "per_s": round(len(latencies) / wall, 1),
        **percentiles(latencies),
        "statuses": statuses,
        "models": sorted(set(models), key=models.index),
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def in_process(x: np.ndarray, blob: bytes, rows_per_call: int, calls: int) -> dict[str, Any]:
    """onnxruntime in this process on the same rows: no HTTP, no JSON."""
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    times = []
    for i in range(calls):
        start = (i * rows_per_call) % (len(x) - rows_per_call)
        batch = np.ascontiguousarray(x[start : start + rows_per_call], dtype=np.float32)
        began = time.perf_counter()
        session.run(None, {"x": batch})
        times.append(time.perf_counter() - began)
    total = sum(times)
    return {
        "rows_per_call": rows_per_call,
        "calls": calls,
        "rows_per_s": round(calls * rows_per_call / total, 1),
        **percentiles(times),
    }


def hot_swap(server: Server, bodies: list[bytes], objective: Path, env: dict[str, str]) -> Any:
    """8 clients send while the second cycle runs and promotes, until just after the swap is
    seen; each pauses 5 ms between requests, so that the cycle is not starved of the cores."""
    swapped_at: list[float] = []
    done = threading.Event()

    def cycle() -> None:
        run_cycle(objective, env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if json.loads(server.get("/model")[1])["trial_id"] == "c002-t00":
                swapped_at.append(time.monotonic())
                break
            time.sleep(0.05)
        time.sleep(0.5)  # and a little traffic after it
        done.set()

    worker = threading.Thread(target=cycle)
    worker.start()
    report = load(server.port, bodies, 8, keep_going=lambda i: not done.is_set(), pause_s=0.005)
    worker.join()
    report["swapped"] = bool(swapped_at)
    report["failed"] = sum(n for s, n in report["statuses"].items() if s != "200")
    return report


def malformed(server: Server, row: list[float]) -> dict[str, Any]:
    kinds = [
        json.dumps({"inputs": [row[:50]]}).encode(),
        json.dumps({"inputs": [[*row[:63], "x"]]}).encode(),
        b'{"input": [' + b"1, " * 63 + b"NaN]}",
        json.dumps({"inputs": [row], "extra": 1}).encode(),
        b"{not json",
        json.dumps({"inputs": [row] * 1025}).encode(),
    ]
    report = load(server.port, [kinds[i % len(kinds)] for i in range(MALFORMED)], 8)
    report["all_4xx"] = all(s.startswith("4") for s in report["statuses"])
    report["healthy_after"] = server.healthy()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(folder)}
        env.setdefault("METAFLOW_USER", "factory")
        os.environ.update(env)  # this process reads the same datastore
        objective = write_objective(folder)
        began = time.monotonic()
        run_cycle(objective, env)
        print(f"cycle 1: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)

        import torch  # noqa: F401  before Metaflow's client (its vendored typing_extensions)

        from factory_lib.data import load_splits
        from factory_lib.serve.model import current_champion

        bundle = current_champion(NAME).bundle
        assert bundle.exports is not None
        spec = bundle.package.objective
        x = np.asarray(load_splits(spec.data, spec.task).raw_x["test"], np.float32)
        rows = [x[i % len(x)].tolist() for i in range(args.requests)]
        bodies = [json.dumps({"input": r}).encode() for r in rows]

        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "requests": args.requests,
            "in_process": [
                in_process(x, bundle.exports.onnx, 1, args.requests),
                in_process(x, bundle.exports.onnx, 64, max(1, args.requests // 64)),
            ],
            "http": {},
        }
        for batching in (False, True):  # the swap last: both measure the first champion
            label = "batching" if batching else "no batching"
            options = () if batching else ("--no-batching",)
            server = Server(env, folder / f"serve-{label}.log", *options)
            try:
                load(server.port, bodies[:50], 4)  # warm-up
                report["http"][label] = {str(c): load(server.port, bodies, c) for c in args.clients}
                if batching:
                    report["malformed"] = malformed(server, rows[0])
                    cycled = [bodies[i % len(bodies)] for i in range(200_000)]  # the bound
                    report["hot_swap"] = hot_swap(server, cycled, objective, env)
            finally:
                server.stop()
            print(f"{label}: done", file=sys.stderr, flush=True)

    print(json.dumps(report, indent=1))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| how | clients | requests/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in report["http"].items():
        for clients, r in runs.items():
            failed = sum(n for s, n in r["statuses"].items() if s != "200")
            lines.append(
                f"| HTTP, {label} | {clients} | {r['per_s']:.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {failed} |"
            )
    for r in report["in_process"]:
        lines.append(
            f"| in-process onnxruntime, {r['rows_per_call']} row(s) a call | 1 | "
            f"{r['rows_per_s'] / r['rows_per_call']:.0f} calls/s ({r['rows_per_s']:.0f} rows/s) | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | |"
        )
    swap, bad = report["hot_swap"], report["malformed"]
    lines += [
        "",
        f"Hot swap under load (8 clients, batching): {swap['requests']} requests while the "
        f"second cycle ran and was promoted, {swap['failed']} failed, p99 {swap['p99_ms']:.1f} ms; "
        f"models answering: {' then '.join(swap['models'])}.",
        f"Malformed: {bad['requests']} requests, statuses {bad['statuses']}, all 4xx: "
        f"{bad['all_4xx']}, healthy after: {bad['healthy_after']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
