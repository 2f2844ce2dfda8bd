"""Executor benchmark: latency and throughput against bare `python3 -c`, measured in the same run.

For each backend (gvisor, bwrap) and isolation (session, strict) it starts a real
`torl executor serve` (pool sized to the cores) and measures over gRPC and REST:
`print(1)` p50/p99, `import sympy; print(sympy.sqrt(8))` p50, and throughput with 32 concurrent
clients, against 32 threads spawning `python3 -c` (the same interpreter). Also: a cold `runsc run`
per request, the service's own RSS and the memory per sandbox, and the demo-shaped burst (3 bursts of
64 concurrent session runs of a line of arithmetic through a service with a pool of 2 x 2).
Writes benchmarks/results/executor.json.

    nice .venv/bin/python benchmarks/bench_executor.py [--seconds 8] [--backends gvisor,bwrap]
    nice .venv/bin/python benchmarks/bench_executor.py --burst-only --backends gvisor
    nice .venv/bin/python benchmarks/bench_executor.py --compare-agent OLD_AGENT.py [--burst-only]
"""

from __future__ import annotations

import argparse
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

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.executor_helpers import run_executor  # noqa: E402
from torl.v1 import common_pb2, executor_pb2  # noqa: E402

PYTHON = os.path.realpath(sys.executable)
SYMPY = "import sympy; print(sympy.sqrt(8))"
# The local demo's shape (configs/demo-cpu.yaml): after each generation phase, a burst of 64
# session runs of a line of arithmetic at once, into a pool of 2 sandboxes x 2 slots.
BURST_RUNS = 64
BURST_ROUNDS = 3
BURST_GAP_SECONDS = 3.0  # the quiet time between bursts (the demo generates then)
BURST_POOL = {"size": 2, "slots_per_sandbox": 2}
SEQUENTIAL_RUNS = 30  # after the bursts: session print(1), one at a time


def burst_code(k: int) -> str:
    return f"a, b, c = {10 + k % 90}, {11 + k % 89}, {k}\nprint(a*b+c)"


def burst_expected(k: int) -> str:
    return str((10 + k % 90) * (11 + k % 89) + k)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bare_latency(code: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([PYTHON, "-c", code], capture_output=True, check=True)
        out.append(time.perf_counter() - t)
    return out


def throughput(fn: Any, clients: int, seconds: float) -> dict[str, float]:
    stop = time.monotonic() + seconds
    lat: list[float] = []
    fails = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal fails
        while time.monotonic() < stop:
            t = time.perf_counter()
            ok = fn()
            d = time.perf_counter() - t
            with lock:
                lat.append(d)
                fails += 0 if ok else 1
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    return {"per_second": len(lat) / wall, "requests": len(lat), "failures": fails, "p99_seconds": pct(lat, 0.99)}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    todo, seen = [pid], []
    while todo:
        for c in children.get(todo.pop(), []):
            seen.append(c)
            todo.append(c)
    return seen


def cold_runsc(n: int) -> list[float]:
    from torl.executor.config import SandboxSettings
    from torl.executor.sandbox import build_layout
    from torl.executor.sandbox.gvisor import GVisorBackend, oci_spec

    with tempfile.TemporaryDirectory() as d:
        s = SandboxSettings(state_dir=d)
        b = GVisorBackend(s, build_layout(s))
        b.prepare()
        out = []
        for i in range(n):
            name = f"torl-exec-{os.getpid()}-cold-{i}"
            bundle = b.bundles / name
            bundle.mkdir(parents=True)
            (bundle / "config.json").write_text(json.dumps(oci_spec(b.rootfs, b.layout, [PYTHON, "-c", "print(1)"], s)))
            t = time.perf_counter()
            subprocess.run([b.runsc, "--root", str(b.runsc_root), "--platform=ptrace", "--network=none", "run",
                            "--bundle", str(bundle), name], capture_output=True, check=True)
            out.append(time.perf_counter() - t)
            b.destroy(name)
        return out


def bench_backend(backend: str, seconds: float, n: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d, run_executor(Path(d), f"sandbox.backend={backend}") as ex:
        time.sleep(1.0)
        stub = ex.stub()
        res["service_rss_mb"] = rss_mb(ex.proc.pid)
        sandbox_rss = sum(rss_mb(p) for p in descendants(ex.proc.pid))
        pool = httpx.get(f"{ex.rest_url}/healthz", timeout=30).json()["pool"]["size"]
        res["per_sandbox_rss_mb"] = sandbox_rss / max(1, pool)
        for iso_name, iso in (("session", executor_pb2.ISOLATION_SESSION), ("strict", executor_pb2.ISOLATION_STRICT)):
            def call(code: str, iso: int = iso) -> executor_pb2.ExecuteResponse:
                return stub.Execute(executor_pb2.ExecuteRequest(code=code, isolation=iso, session_id="bench",
                                                                timeout_seconds=10), timeout=60)
            for _ in range(5):
                call("print(1)")
            lat, fails = [], 0
            for _ in range(n):
                t = time.perf_counter()
                r = call("print(1)")
                lat.append(time.perf_counter() - t)
                fails += r.status != common_pb2.TOOL_STATUS_OK
            sym = []
            for _ in range(max(10, n // 3)):
                t = time.perf_counter()
                r = call(SYMPY)
                sym.append(time.perf_counter() - t)
                fails += r.observation != "2*sqrt(2)"
            tp = throughput(lambda: call("print(1)").status == common_pb2.TOOL_STATUS_OK, 32, seconds)
            body = {"code": "print(1)", "isolation": iso_name, "session_id": "bench"}
            with httpx.Client(timeout=60) as http:
                # REST callers are another tenant than gRPC ones: the first call may wait for a sandbox handover.
                for _ in range(3):
                    http.post(f"{ex.rest_url}/v1/runs", json=body)
                rest_lat = []
                for _ in range(n):
                    t = time.perf_counter()
                    ok = http.post(f"{ex.rest_url}/v1/runs", json=body).json()["status"] == "ok"
                    rest_lat.append(time.perf_counter() - t)
                    fails += not ok
            clients = threading.local()

            def rest_call(clients: threading.local = clients, body: dict[str, str] = body) -> bool:
                if not hasattr(clients, "c"):
                    clients.c = httpx.Client(timeout=60)
                return bool(clients.c.post(f"{ex.rest_url}/v1/runs", json=body).json()["status"] == "ok")
            rest_tp = throughput(rest_call, 32, seconds)
            res[iso_name] = {
                "grpc_print1_p50_seconds": statistics.median(lat),
                "grpc_print1_p99_seconds": pct(lat, 0.99),
                "grpc_sympy_p50_seconds": statistics.median(sym),
                "grpc_throughput": tp,
                "rest_print1_p50_seconds": statistics.median(rest_lat),
                "rest_throughput": rest_tp,
                "sequential_failures": fails,
            }
    return res


def bench_burst(backend: str) -> dict[str, Any]:
    """`BURST_ROUNDS` bursts of `BURST_RUNS` concurrent gRPC session runs through a real service
    (pool 2 x 2), `BURST_GAP_SECONDS` apart: throughput per burst and per-call latency."""
    from concurrent.futures import ThreadPoolExecutor

    sets = [f"sandbox.backend={backend}", *(f"pool.{k}={v}" for k, v in BURST_POOL.items())]
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d, run_executor(Path(d), *sets) as ex, \
            ThreadPoolExecutor(BURST_RUNS) as threads:
        stub = ex.stub()

        def call(k: int) -> tuple[float, bool]:
            t = time.perf_counter()
            r = stub.Execute(executor_pb2.ExecuteRequest(code=burst_code(k), isolation=executor_pb2.ISOLATION_SESSION,
                                                         session_id=f"burst-{k}", timeout_seconds=10), timeout=120)
            return time.perf_counter() - t, r.status == common_pb2.TOOL_STATUS_OK and r.observation == burst_expected(k)

        call(0)
        for _ in range(BURST_ROUNDS):
            time.sleep(BURST_GAP_SECONDS)
            t = time.perf_counter()
            outs = list(threads.map(call, range(BURST_RUNS)))
            wall = time.perf_counter() - t
            rounds.append({"per_second": BURST_RUNS / wall, "p50_seconds": statistics.median(o[0] for o in outs),
                           "failures": sum(not o[1] for o in outs)})
    return {"rounds": rounds, "per_second_median": statistics.median(r["per_second"] for r in rounds),
            "failures": sum(r["failures"] for r in rounds), "load_average": os.getloadavg()}


def compare_agents(old_agent: str, backends: list[str], n: int, concurrent: int) -> dict[str, Any]:
    """Strict runs on two one-sandbox pools side by side, one with `old_agent` and one with the
    current agent, requests interleaved (old, new, old, new, ...) so both see the same load."""
    import asyncio

    import torl.executor.sandbox.base as sandbox_module
    from torl.executor.config import ExecutorSettings
    from torl.executor.core import Caller, Executor, RunRequest, make_executor

    current = str(sandbox_module.AGENT_FILE)

    async def start(agent: str, backend: str, state: str) -> Executor:
        sandbox_module.AGENT_FILE = Path(agent)  # read when each sandbox's launch command is built
        ex = make_executor(ExecutorSettings(sandbox={"backend": backend, "state_dir": state}, pool={"size": 1}))
        await ex.pool.start(wait=True)
        return ex

    async def run(backend: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            pools = {"old": await start(old_agent, backend, d1)}
            pools["new"] = await start(current, backend, d2)
            try:
                caller = Caller("bench")
                for label, code in (("print1", "print(1)"), ("sympy", SYMPY)):
                    lat: dict[str, list[float]] = {k: [] for k in pools}
                    for _ in range(n):
                        for k, ex in pools.items():
                            t = time.perf_counter()
                            o = await ex.run(RunRequest(code=code, isolation="strict"), caller)
                            lat[k].append(time.perf_counter() - t)
                            assert o.status == "ok", o
                    for k in pools:
                        out[f"{k}_{label}_p50_seconds"] = statistics.median(lat[k])
                for k, ex in pools.items():
                    t = time.perf_counter()
                    outs = await asyncio.gather(
                        *(ex.run(RunRequest(code="print(1)", isolation="strict"), caller) for _ in range(concurrent))
                    )
                    out[f"{k}_throughput_per_second"] = concurrent / (time.perf_counter() - t)
                    out[f"{k}_failures"] = sum(o.status != "ok" for o in outs)
            finally:
                for ex in pools.values():
                    await ex.pool.close()
        return out

    return {b: asyncio.run(run(b)) for b in backends}


def compare_bursts(old_agent: str, backend: str, repeats: int) -> dict[str, Any]:
    """The demo's burst (see bench_burst) on in-process pools of 2 x 2, one pool at a time, alternating
    `old_agent` and the current agent, each with the default settings and with the `executor:` section
    of configs/demo-cpu.yaml (the old agent ignores settings it does not know)."""
    import asyncio

    import yaml

    import torl.executor.sandbox.base as sandbox_module
    from torl.executor.config import ExecutorSettings
    from torl.executor.core import Caller, RunRequest, make_executor

    current = str(sandbox_module.AGENT_FILE)
    demo = yaml.safe_load((REPO / "configs" / "demo-cpu.yaml").read_text())["executor"]

    async def rounds(agent: str, config: dict[str, Any]) -> list[dict[str, float]]:
        sandbox_module.AGENT_FILE = Path(agent)  # read when each sandbox's launch command is built
        with tempfile.TemporaryDirectory() as d:
            ex = make_executor(ExecutorSettings(
                sandbox={**config.get("sandbox", {}), "backend": backend, "state_dir": d},
                pool={**config.get("pool", {}), **BURST_POOL},
            ))
            await ex.pool.start(wait=True)
            out = []
            try:
                caller = Caller("bench", default_isolation="session")
                for _ in range(BURST_ROUNDS):
                    await asyncio.sleep(BURST_GAP_SECONDS)
                    t = time.perf_counter()
                    outs = await asyncio.gather(*(
                        ex.run(RunRequest(code=burst_code(k), isolation="session", session_id=f"burst-{k}"), caller)
                        for k in range(BURST_RUNS)
                    ))
                    wall = time.perf_counter() - t
                    out.append({"per_second": BURST_RUNS / wall,
                                "p50_seconds": statistics.median(o.duration_seconds + o.queue_seconds for o in outs),
                                "run_p50_seconds": statistics.median(o.duration_seconds for o in outs),
                                "failures": sum(o.observation != burst_expected(k) for k, o in enumerate(outs))})
                await asyncio.sleep(BURST_GAP_SECONDS)
                lat = []
                for _ in range(SEQUENTIAL_RUNS):  # one caller, one run at a time
                    t = time.perf_counter()
                    o = await ex.run(RunRequest(code="print(1)", isolation="session", session_id="seq"), caller)
                    lat.append(time.perf_counter() - t)
                    out[-1]["failures"] += o.observation != "1"
                out[-1]["sequential_p50_seconds"] = statistics.median(lat)
            finally:
                await ex.pool.close()
            return out

    async def run() -> dict[str, Any]:
        found: dict[str, list[dict[str, float]]] = {}
        for _ in range(repeats):
            for config_name, config in (("default", {}), ("demo", demo)):
                for agent_name, agent in (("old", old_agent), ("new", current)):
                    found.setdefault(f"{agent_name}_{config_name}", []).extend(await rounds(agent, config))
        return {k: {"rounds": v, "per_second_median": statistics.median(r["per_second"] for r in v),
                    "p50_seconds_median": statistics.median(r["p50_seconds"] for r in v),
                    "run_p50_seconds_median": statistics.median(r["run_p50_seconds"] for r in v),
                    "sequential_p50_seconds": [r["sequential_p50_seconds"] for r in v if "sequential_p50_seconds" in r],
                    "failures": sum(r["failures"] for r in v)} for k, v in found.items()}

    return {"demo_executor_config": demo, "load_average_before": os.getloadavg(), **asyncio.run(run()),
            "load_average_after": os.getloadavg()}


def rates(r: dict[str, Any]) -> str:
    return ", ".join(f"{x['per_second']:.1f}" for x in r["rounds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--backends", default="gvisor,bwrap")
    ap.add_argument("--compare-agent", default="",
                    help="Only compare strict runs of this older agent.py with the current one, interleaved.")
    ap.add_argument("--burst-only", action="store_true",
                    help="Only the demo-shaped burst (with --compare-agent: old vs current agent, gvisor).")
    ap.add_argument("--repeats", type=int, default=2, help="--compare-agent --burst-only: alternations.")
    args = ap.parse_args()
    if args.compare_agent and args.burst_only:
        backend = args.backends.split(",")[0]
        cb = compare_bursts(args.compare_agent, backend, args.repeats)
        for k in ("old_default", "new_default", "old_demo", "new_demo"):
            r = cb[k]
            print(f"[{backend}/session burst of {BURST_RUNS}, pool 2x2, {k}] "
                  f"{r['per_second_median']:.1f}/s (rounds: {rates(r)}), "
                  f"p50 per call {r['p50_seconds_median'] * 1000:.0f} ms (queue included), "
                  f"run p50 {r['run_p50_seconds_median'] * 1000:.1f} ms, failures {r['failures']}; sequential "
                  f"print(1) p50 {', '.join(f'{s * 1000:.1f}' for s in r['sequential_p50_seconds'])} ms")
        for cfg in ("default", "demo"):
            ratio = cb[f"new_{cfg}"]["per_second_median"] / cb[f"old_{cfg}"]["per_second_median"]
            print(f"{cfg}: new/old burst throughput {ratio:.2f}x")
        print(f"load average before {cb['load_average_before']}, after {cb['load_average_after']}")
        out = REPO / "benchmarks" / "results" / "executor_burst_compare.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(cb, indent=2))
        print(f"wrote {out}")
        return
    if args.burst_only:
        for backend in args.backends.split(","):
            b = bench_burst(backend)
            print(f"[{backend}/session burst of {BURST_RUNS} over gRPC, pool 2x2] {b['per_second_median']:.1f}/s "
                  f"(rounds: {rates(b)}), failures {b['failures']}, "
                  f"load {b['load_average']}")
        return
    if args.compare_agent:
        ab = compare_agents(args.compare_agent, args.backends.split(","), args.n, 60)
        for backend, r in ab.items():
            ms = {k: v * 1000 for k, v in r.items() if k.endswith("_p50_seconds")}
            print(f"[{backend}/strict, one sandbox each, interleaved] print(1) p50 old "
                  f"{ms['old_print1_p50_seconds']:.1f} ms / new {ms['new_print1_p50_seconds']:.1f} ms; "
                  f"sympy p50 old {ms['old_sympy_p50_seconds']:.1f} / new {ms['new_sympy_p50_seconds']:.1f} ms; "
                  f"60 at once old {r['old_throughput_per_second']:.1f}/s "
                  f"/ new {r['new_throughput_per_second']:.1f}/s; "
                  f"failures {r['old_failures'] + r['new_failures']}")
        out = REPO / "benchmarks" / "results" / "executor_agent_compare.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(ab, indent=2))
        print(f"wrote {out}")
        return
    bare_lat = bare_latency("print(1)", args.n)
    bare_tp = throughput(lambda: subprocess.run([PYTHON, "-c", "print(1)"], capture_output=True).returncode == 0,
                         32, args.seconds)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": PYTHON},
        "gvisor_platform": "ptrace",
        "bare": {"print1_p50_seconds": statistics.median(bare_lat), "throughput": bare_tp},
    }
    if "gvisor" in args.backends:
        cold = cold_runsc(5)
        result["cold_runsc_run_p50_seconds"] = statistics.median(cold)
    for backend in args.backends.split(","):
        result[backend] = bench_backend(backend, args.seconds, args.n)
        result[backend]["burst"] = bench_burst(backend)
    b50 = result["bare"]["print1_p50_seconds"]
    btp = result["bare"]["throughput"]["per_second"]
    print(f"bare python3 -c: p50 {b50 * 1000:.1f} ms, 32-thread throughput {btp:.1f}/s")
    if "cold_runsc_run_p50_seconds" in result:
        c = result["cold_runsc_run_p50_seconds"]
        print(f"cold runsc run per request: p50 {c * 1000:.0f} ms = {c / b50:.1f}x bare")
    for backend in args.backends.split(","):
        r = result[backend]
        print(f"[{backend}] service RSS {r['service_rss_mb']:.0f} MB, per sandbox {r['per_sandbox_rss_mb']:.0f} MB")
        print(f"[{backend}/session burst of {BURST_RUNS} over gRPC, pool 2x2] {r['burst']['per_second_median']:.1f}/s "
              f"(rounds: {rates(r['burst'])}), failures {r['burst']['failures']}")
        for iso in ("session", "strict"):
            x = r[iso]
            x["ratios"] = {
                "grpc_p50_vs_bare": x["grpc_print1_p50_seconds"] / b50,
                "grpc_throughput_vs_bare": x["grpc_throughput"]["per_second"] / btp,
                "sympy_p50_vs_print1_p50": x["grpc_sympy_p50_seconds"] / x["grpc_print1_p50_seconds"],
                "rest_p50_vs_bare": x["rest_print1_p50_seconds"] / b50,
                "rest_throughput_vs_bare": x["rest_throughput"]["per_second"] / btp,
            }
            q = x["ratios"]
            print(f"[{backend}/{iso}] gRPC print(1) p50 {x['grpc_print1_p50_seconds'] * 1000:.1f} ms "
                  f"({q['grpc_p50_vs_bare']:.2f}x bare), p99 {x['grpc_print1_p99_seconds'] * 1000:.0f} ms; "
                  f"sympy p50 {q['sympy_p50_vs_print1_p50']:.2f}x print(1); "
                  f"32 clients {x['grpc_throughput']['per_second']:.1f}/s ({q['grpc_throughput_vs_bare']:.2f}x bare), "
                  f"p99 {x['grpc_throughput']['p99_seconds'] * 1000:.0f} ms, failures "
                  f"{x['grpc_throughput']['failures'] + x['sequential_failures']}")
            print(f"[{backend}/{iso}] REST print(1) p50 {x['rest_print1_p50_seconds'] * 1000:.1f} ms "
                  f"({q['rest_p50_vs_bare']:.2f}x bare); 32 clients {x['rest_throughput']['per_second']:.1f}/s "
                  f"({q['rest_throughput_vs_bare']:.2f}x bare), failures {x['rest_throughput']['failures']}")
    out = REPO / "benchmarks" / "results" / "executor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
