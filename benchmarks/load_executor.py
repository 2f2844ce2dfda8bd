"""Sustained load on the executor's REST API from a second process, loopback only, bounded in time
and in requests.

The script starts a real `torl executor serve` (gVisor by default; own state dir, sandbox name
prefix and API key), measures a baseline in the same run (threads spawning bare `python3 -c`),
then runs the load generator as a separate process (`--generator`): C client threads post runs for
S seconds or until N requests, each with its own request id and a program whose right answer the
generator knows (90% `print(i*7)`, 5% a raised error, 5% a sympy call). Every request is accounted
for: ok-and-right, wrong answer, lost (transport error / non-200), or hung (no answer within the
per-request limit).

Around the load it records the executor's process tree (processes, open fds, RSS) before, every
second during, and after the run (once idle), and the gVisor sandboxes of its state dir, so a
sandbox, fd or memory leak shows up. Writes benchmarks/results/load_executor.json.

    nice .venv/bin/python benchmarks/load_executor.py [--seconds 60] [--clients 16] [--max-requests 20000]
                                                      [--backend gvisor|bwrap]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PYTHON = os.path.realpath(sys.executable)
KEY = "load-key-0123456789abcdef0123"


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def job(i: int) -> tuple[str, str, str]:
    """(code, expected status, expected observation) of request i."""
    if i % 20 == 7:
        return f"raise ValueError('bad {i}')", "error", f"ValueError: bad {i}"
    if i % 20 == 13:
        return f"import sympy; print(sympy.factorint({i * 6}))", "ok", str(_factorint(i * 6))
    return f"print({i}*7)", "ok", str(i * 7)


def _factorint(n: int) -> dict[int, int]:
    out: dict[int, int] = {}
    d = 2
    while d * d <= n:
        while n % d == 0:
            out[d] = out.get(d, 0) + 1
            n //= d
        d += 1
    if n > 1:
        out[n] = out.get(n, 0) + 1
    return out


# -- the generator (second process) ----------------------------------------------------------------
def generate(url: str, key: str, clients: int, seconds: float, max_requests: int, request_timeout: float
             ) -> dict[str, Any]:
    import httpx

    counter = iter(range(max_requests))
    lock = threading.Lock()
    lat: list[float] = []
    done_at: list[float] = []
    outcome = {"right": 0, "wrong": 0, "lost": 0, "hung": 0}
    samples: list[str] = []
    t_start = time.monotonic()
    stop = t_start + seconds

    def client() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=request_timeout) as http:
            while time.monotonic() < stop:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                code, status, observation = job(i)
                rid = f"load-{i}"
                t = time.perf_counter()
                kind = "right"
                try:
                    r = http.post(url, json={"code": code, "request_id": rid, "timeout_seconds": 10})
                    if r.status_code != 200:
                        kind = "lost"
                        note = f"{r.status_code} {r.text[:200]}"
                    else:
                        d = r.json()
                        if (d["request_id"], d["status"], d["observation"]) != (rid, status, observation):
                            kind = "wrong"
                            note = f"{rid}: {d['status']} {d['observation'][:80]!r} != {status} {observation!r}"
                except httpx.TimeoutException as e:
                    kind, note = "hung", f"{rid}: {type(e).__name__}"
                except httpx.HTTPError as e:
                    kind, note = "lost", f"{rid}: {type(e).__name__}: {e}"
                elapsed = time.perf_counter() - t
                with lock:
                    outcome[kind] += 1
                    if kind == "right":
                        lat.append(elapsed)
                        done_at.append(time.monotonic() - t_start)
                    elif len(samples) < 10:
                        samples.append(note)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + request_timeout + 30)
    wall = time.monotonic() - t_start
    # Requests per second in 5 s windows (the first window is warm-up): "held" = the slowest
    # window against the median one.
    windows: dict[int, int] = {}
    for t in done_at:
        windows[int(t // 5)] = windows.get(int(t // 5), 0) + 1
    full = [windows.get(w, 0) / 5.0 for w in range(1, int(wall // 5))]
    return {
        "requests": sum(outcome.values()), **outcome, "failure_samples": samples,
        "seconds": wall, "requests_per_second": len(lat) / wall if wall else 0.0,
        "p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000, "max_ms": max(lat, default=0.0) * 1000,
        "window_rps": full,
        "held_ratio": (min(full) / statistics.median(full)) if full and statistics.median(full) > 0 else 0.0,
    }


# -- the driver --------------------------------------------------------------------------------------
def bare_throughput(clients: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    n = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal n
        while time.monotonic() < stop:
            subprocess.run([PYTHON, "-c", "print(1*7)"], capture_output=True, check=True)
            with lock:
                n += 1

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(worker)
    return n / seconds


def sandbox_count(backend: str, state: Path, prefix: str, pid: int) -> int:
    from tests.e2e.helpers import processes_mentioning, runsc_sandboxes

    if backend == "gvisor":
        return len(runsc_sandboxes(state, prefix))
    return len([p for p in processes_mentioning("bwrap") if _descends(p, pid)])


def _descends(pid: int, ancestor: int) -> bool:
    import psutil

    try:
        return any(p.pid == ancestor for p in psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.e2e.helpers import process_usage, tree_usage
    from tests.integration.executor_helpers import run_executor

    tmp = Path(tempfile.mkdtemp(prefix="torl-load-"))
    keys = tmp / "keys.yaml"
    keys.write_text(f'keys:\n  - name: load\n    key: "{KEY}"\n    rate_per_second: 100000\n    burst: 100000\n'
                    f"    max_concurrent: 4096\n")
    prefix = f"load-{os.getpid()}"
    baseline = bare_throughput(args.clients, min(args.seconds, 5.0))
    print(f"baseline: {baseline:.1f} runs/s ({args.clients} threads spawning python3 -c)", flush=True)
    with run_executor(tmp, f"sandbox.backend={args.backend}", f"pool.size={args.pool_size}",
                      f"rest.api_keys_file={keys}", f"sandbox.name_prefix={prefix}", timeout=300) as ex:
        url = f"{ex.rest_url}/v1/runs"
        state = tmp / "state"
        # Warm-up: every sandbox started and used once, before "before" is measured.
        warm = generate(url, KEY, args.clients, 3.0, 200, args.request_timeout)
        time.sleep(2.0)
        before = tree_usage(ex.proc.pid)
        service_before = process_usage(ex.proc.pid)
        sandboxes_before = sandbox_count(args.backend, state, prefix, ex.proc.pid)
        rss: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(1.0):
                rss.append(tree_usage(ex.proc.pid).rss_bytes)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out_file = tmp / "generator.json"
        gen = subprocess.run(
            [sys.executable, __file__, "--generator", "--url", url, "--clients", str(args.clients), "--seconds",
             str(args.seconds), "--max-requests", str(args.max_requests), "--request-timeout",
             str(args.request_timeout), "--out", str(out_file)],
            timeout=args.seconds + args.request_timeout + 120, check=False, cwd=REPO,
        )
        sampling.set()
        sampler.join(5)
        if gen.returncode != 0:
            raise RuntimeError(f"load generator exited with {gen.returncode}")
        load = json.loads(out_file.read_text())
        time.sleep(3.0)  # idle: recycled sandboxes settle
        after = tree_usage(ex.proc.pid)
        service_after = process_usage(ex.proc.pid)
        sandboxes_after = sandbox_count(args.backend, state, prefix, ex.proc.pid)
        health = ex.stub()  # still serving after the load
        from torl.v1 import common_pb2, executor_pb2

        final = health.Execute(executor_pb2.ExecuteRequest(code="print(6*7)"), timeout=60)
        assert final.status == common_pb2.TOOL_STATUS_OK and final.observation == "42"
    third = max(1, len(rss) // 3)
    rss_first = statistics.fmean(rss[:third]) if rss else float(before.rss_bytes)
    rss_last = statistics.fmean(rss[-third:]) if rss else float(after.rss_bytes)
    return {
        "backend": args.backend, "clients": args.clients, "pool_size": args.pool_size,
        "warmup_requests": warm["requests"],
        "baseline_bare_python_rps": baseline,
        **load,
        "rps_vs_bare_python": load["requests_per_second"] / baseline if baseline else 0.0,
        # tree: the service and every sandbox process (gVisor's ptrace stubs come and go with the
        # processes inside); service: the executor process alone (its sockets, pipes, files).
        "before": vars(before), "after": vars(after),
        "service_before": vars(service_before), "service_after": vars(service_after),
        "sandboxes_before": sandboxes_before, "sandboxes_after": sandboxes_after,
        "rss_first_third_bytes": rss_first, "rss_last_third_bytes": rss_last,
        "rss_growth_ratio": rss_last / rss_first if rss_first else 0.0,
        "command": " ".join(["benchmarks/load_executor.py", *sys.argv[1:]]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="Load duration (bounded).")
    p.add_argument("--clients", type=int, default=16, help="Concurrent client threads in the generator.")
    p.add_argument("--max-requests", type=int, default=20_000, help="Upper bound on requests.")
    p.add_argument("--request-timeout", type=float, default=60.0, help="A request unanswered this long is hung.")
    p.add_argument("--backend", choices=("gvisor", "bwrap"), default="gvisor")
    p.add_argument("--pool-size", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "load_executor.json"))
    p.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not 1 <= args.seconds <= 3600 or not 1 <= args.clients <= 512 or not 1 <= args.max_requests <= 10_000_000:
        p.error("--seconds must be in [1, 3600], --clients in [1, 512], --max-requests in [1, 10000000]")
    if args.generator:
        result = generate(args.url, KEY, args.clients, args.seconds, args.max_requests, args.request_timeout)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return 0
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("window_rps", "failure_samples")}, indent=2))
    r = result
    print(f"\n{r['requests']} requests in {r['seconds']:.0f}s from a second process: "
          f"{r['requests_per_second']:.1f} req/s = {r['rps_vs_bare_python']:.2f}x bare python3 -c; "
          f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; lost {r['lost']}, hung {r['hung']}, "
          f"wrong {r['wrong']}; held {r['held_ratio']:.2f}; service fds {r['service_before']['open_fds']} -> "
          f"{r['service_after']['open_fds']}; sandboxes {r['sandboxes_before']} -> {r['sandboxes_after']}; "
          f"RSS x{r['rss_growth_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
