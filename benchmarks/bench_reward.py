"""Reward service throughput and bounded time, against a baseline measured in the same run.

Pairs: 2,000 (response, reference) pairs from MATH500 answers (data/eval/math500.jsonl): per
answer one identical, one rewritten-equivalent, one wrong and one with extra text around the box,
each inside a ToRL-style response with a code block and its output.

- baseline: one process calling math-verify directly, `verify(parse(ref), parse(response))`
  per pair, the way a simple reward function does;
- service: `torl reward serve` (real gRPC on loopback, default 2 workers), ScoreBatch in groups
  of 16 with 8 calls in flight (what rollout sends), throughput and p50/p99 per-call latency;
- pathological: the same pairs with 5% replaced by `2^{10^{100}}`, a 1 MB response, 5,000
  nested braces and malformed LaTeX; wall time compared with the clean run.

    nice .venv/bin/python benchmarks/bench_reward.py [--pairs 2000]

Writes benchmarks/results/bench_reward.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_reward.json"

RESPONSE = (
    "Let me compute this with Python.\n```python\nfrom sympy import *\nprint(simplify(1))\n```\n"
    "```output\n1\n```\nThe computation confirms it, so the answer is $\\boxed{{{a}}}$."
)


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    answers = [json.loads(line)["answer"] for line in (REPO / "data/eval/math500.jsonl").read_text().splitlines()]
    pairs: list[tuple[str, str]] = []
    for a in answers:
        rewritten = a.replace("\\frac", "\\dfrac").replace("\\left", "").replace("\\right", "").replace(",", ", ")
        pairs += [
            (RESPONSE.format(a=a), a),
            (RESPONSE.format(a=rewritten), a),
            (RESPONSE.format(a=f"{a}+1" if "=" not in a else f"{a}1"), a),
            (f"We are asked for the value.\n\\[ \\boxed{{{a}}} \\]\nThis matches the check above.", a),
        ]
    random.Random(seed).shuffle(pairs)
    return (pairs * (n // len(pairs) + 1))[:n]


PATHOLOGICAL = [
    RESPONSE.format(a="2^{10^{100}}"),
    "x" * 1_000_000,
    RESPONSE.format(a="{" * 5000 + "1" + "}" * 5000),
    RESPONSE.format(a="\\frac{\\sqrt{(}{\\left[ \\begin{pmatrix"),
]


def with_pathological(pairs: list[tuple[str, str]], share: float = 0.05) -> list[tuple[str, str]]:
    out = list(pairs)
    step = round(1 / share)
    for k, i in enumerate(range(0, len(out), step)):
        out[i] = (PATHOLOGICAL[k % len(PATHOLOGICAL)], out[i][1])
    return out


def baseline(pairs: list[tuple[str, str]]) -> tuple[float, list[bool]]:
    from math_verify import parse, verify

    verdicts: list[bool] = []
    t0 = time.perf_counter()
    for response, reference in pairs:
        gold = parse("\\boxed{" + reference + "}")
        pred = parse(response)
        verdicts.append(bool(verify(gold, pred)))
    return time.perf_counter() - t0, verdicts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torl.cli.main", "reward", "serve", "--port", str(port), "--metrics-port", "0",
         "--set", f"grader.workers={workers}", "--log-level", "warning"],
        cwd=REPO,
    )
    target = f"127.0.0.1:{port}"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 120
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return proc, target
            except grpc.RpcError:
                time.sleep(0.2)
    proc.kill()
    raise RuntimeError("reward service did not become healthy")


def run_service(target: str, pairs: list[tuple[str, str]], group: int, in_flight: int) -> dict[str, object]:
    from torl.v1 import reward_pb2, reward_pb2_grpc

    chunks = [pairs[i : i + group] for i in range(0, len(pairs), group)]
    latencies: list[float] = []
    item_seconds: list[float] = []
    correct: list[bool] = []

    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)

        def call(chunk: list[tuple[str, str]]) -> tuple[float, list[float], list[bool]]:
            req = reward_pb2.ScoreBatchRequest(
                requests=[reward_pb2.ScoreRequest(response=r, reference=ref) for r, ref in chunk]
            )
            t = time.perf_counter()
            resp = stub.ScoreBatch(req, timeout=300)
            return time.perf_counter() - t, [x.seconds for x in resp.responses], [x.correct for x in resp.responses]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(in_flight) as ex:
            for lat, secs, ok in ex.map(call, chunks):
                latencies.append(lat)
                item_seconds += secs
                correct += ok
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    qi = statistics.quantiles(item_seconds, n=100)
    return {
        "wall_seconds": round(wall, 3),
        "pairs_per_second": round(len(pairs) / wall, 1),
        "call_p50_seconds": round(q[49], 4),
        "call_p99_seconds": round(q[98], 4),
        "item_p50_seconds": round(qi[49], 4),
        "item_p99_seconds": round(qi[98], 4),
        "item_max_seconds": round(max(item_seconds), 4),
        "correct": sum(correct),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--in-flight", type=int, default=8)
    args = ap.parse_args()

    pairs = make_pairs(args.pairs)
    bad = with_pathological(pairs)
    print(f"pairs={len(pairs)} workers={args.workers} cpus={os.cpu_count()}", flush=True)

    base_seconds, base_verdicts = baseline(pairs)
    print(f"baseline (single-process math-verify): {base_seconds:.2f}s  {len(pairs) / base_seconds:.1f} pairs/s "
          f"correct={sum(base_verdicts)}", flush=True)

    def fresh_run(items: list[tuple[str, str]]) -> dict[str, object]:
        # A fresh server per run, so neither run profits from the other's warm caches.
        proc, target = start_server(args.workers)
        try:
            run_service(target, make_pairs(64, seed=1), args.group, args.in_flight)  # warm the channel
            return run_service(target, items, args.group, args.in_flight)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    clean = fresh_run(pairs)
    print(f"service clean: {clean}", flush=True)
    patho = fresh_run(bad)
    print(f"service 5% pathological: {patho}", flush=True)

    speedup = base_seconds / float(clean["wall_seconds"])  # type: ignore[arg-type]
    slowdown = float(patho["wall_seconds"]) / float(clean["wall_seconds"])  # type: ignore[arg-type]
    print(f"throughput ratio service/baseline: {speedup:.2f}x (target >= 1.5x)")
    print(f"pathological/clean wall-time ratio: {slowdown:.2f}x (target <= 2x)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "nice .venv/bin/python benchmarks/bench_reward.py " + " ".join(sys.argv[1:]),
                "pairs": len(pairs),
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "baseline": {
                    "wall_seconds": round(base_seconds, 3),
                    "pairs_per_second": round(len(pairs) / base_seconds, 1),
                    "correct": sum(base_verdicts),
                },
                "service_clean": clean,
                "service_pathological_5pct": patho,
                "throughput_ratio": round(speedup, 2),
                "pathological_ratio": round(slowdown, 2),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
