"""Executor against a locally run SandboxFusion server, bare `python3 -c` and a cold `runsc run`.

Same snippets for all (`print(1)`, and `import sympy; print(sympy.sqrt(8))`), same machine, same
run; ratios are against bare `python3 -c` (the project's interpreter) measured here:

- bare: a fresh `python3 -c` per request (no isolation);
- SandboxFusion (benchmarks/peers/setup_sandboxfusion.sh; its `local.yaml`, `isolation: none`:
  each request writes the code to a temp file and runs `python file.py` as a subprocess)
  over its REST `POST /run_code`;
- torl executor on gVisor (ptrace), REST `POST /v1/runs` with isolation strict (a fresh process per
  run, the REST default) and gRPC Execute with isolation session (what rollout uses);
- a cold `runsc run` of an OCI bundle per request (what a pre-started pool avoids).

Per target: sequential p50/p99 of `print(1)`, sympy p50, and 16-client throughput. By hand, not CI:

    bash benchmarks/peers/setup_sandboxfusion.sh   # once
    nice .venv/bin/python benchmarks/peers/bench_sandboxfusion.py --seconds 6 -n 30
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_executor import SYMPY, cold_runsc, pct, throughput  # noqa: E402

from tests.conftest import free_port  # noqa: E402
from tests.integration.executor_helpers import run_executor  # noqa: E402
from torl.v1 import common_pb2, executor_pb2  # noqa: E402

SF = ROOT / "benchmarks" / "peers" / "src" / "sandboxfusion"
RESULTS = ROOT / "benchmarks" / "results" / "sandboxfusion.json"
CLIENTS = 16


def measure(call: Callable[[str], str], n: int, seconds: float) -> dict[str, Any]:
    """call(code) -> stdout (stripped); checks every answer."""
    for _ in range(3):
        call("print(1)")
    lat, fails = [], 0
    for _ in range(n):
        t = time.perf_counter()
        fails += call("print(1)") != "1"
        lat.append(time.perf_counter() - t)
    sym = []
    for _ in range(max(5, n // 3)):
        t = time.perf_counter()
        fails += call(SYMPY) != "2*sqrt(2)"
        sym.append(time.perf_counter() - t)
    tp = throughput(lambda: call("print(1)") == "1", CLIENTS, seconds)
    return {"print1_p50_seconds": statistics.median(lat), "print1_p99_seconds": pct(lat, 0.99),
            "sympy_p50_seconds": statistics.median(sym), "throughput": tp, "sequential_failures": fails}


def start_sandboxfusion(port: int, log: Path) -> subprocess.Popen[bytes]:
    py = SF / "envs" / "sandbox" / "bin" / "python"
    if not py.is_file():
        raise SystemExit(f"{py} missing: run `bash benchmarks/peers/setup_sandboxfusion.sh` first")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(py), "-m", "uvicorn", "sandbox.server.server:app", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=SF / "SandboxFusion", stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "SANDBOX_CONFIG": "local"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SandboxFusion exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/ping", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"SandboxFusion not up after 120 s:\n{log.read_text()[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    res: dict[str, Any] = {"loadavg_start": os.getloadavg(),
                           "sandboxfusion_commit": (SF / "SandboxFusion" / "COMMIT").read_text().strip()}

    def bare(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()

    res["bare"] = measure(bare, args.n, args.seconds)
    print(f"bare: {json.dumps(res['bare'])}", flush=True)

    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = start_sandboxfusion(port, Path(d) / "sandboxfusion.log")
        try:
            local = threading.local()

            def sf(code: str) -> str:
                if not hasattr(local, "c"):
                    local.c = httpx.Client(timeout=60)
                r = local.c.post(f"http://127.0.0.1:{port}/run_code",
                                 json={"code": code, "language": "python", "run_timeout": 10}).json()
                return str(r.get("run_result", {}).get("stdout", "")).strip() if r.get("status") == "Success" else ""

            res["sandboxfusion_rest"] = measure(sf, args.n, args.seconds)
            print(f"sandboxfusion: {json.dumps(res['sandboxfusion_rest'])}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    with tempfile.TemporaryDirectory() as d, run_executor(Path(d), "sandbox.backend=gvisor") as ex:
        time.sleep(1.0)
        stub = ex.stub()
        local2 = threading.local()

        def torl_rest(code: str) -> str:
            if not hasattr(local2, "c"):
                local2.c = httpx.Client(timeout=60)
            r = local2.c.post(f"{ex.rest_url}/v1/runs", json={"code": code, "isolation": "strict"}).json()
            return str(r.get("observation", "")).strip() if r.get("status") == "ok" else ""

        def torl_grpc(code: str) -> str:
            r = stub.Execute(executor_pb2.ExecuteRequest(code=code, isolation=executor_pb2.ISOLATION_SESSION,
                                                         session_id="bench", timeout_seconds=10), timeout=60)
            return r.observation.strip() if r.status == common_pb2.TOOL_STATUS_OK else ""

        res["torl_rest_strict_gvisor"] = measure(torl_rest, args.n, args.seconds)
        print(f"torl REST strict: {json.dumps(res['torl_rest_strict_gvisor'])}", flush=True)
        res["torl_grpc_session_gvisor"] = measure(torl_grpc, args.n, args.seconds)
        print(f"torl gRPC session: {json.dumps(res['torl_grpc_session_gvisor'])}", flush=True)
    cold = cold_runsc(max(5, args.n // 3))
    res["cold_runsc_print1_p50_seconds"] = statistics.median(cold)
    res["loadavg_end"] = os.getloadavg()
    base = res["bare"]
    lines = ["| target | print(1) p50 | x bare | p99 | sympy p50 | 16 clients /s | x bare | failures |",
             "|---|---|---|---|---|---|---|---|"]
    for key, label in (("bare", "bare `python3 -c`"), ("sandboxfusion_rest", "SandboxFusion REST (isolation none)"),
                       ("torl_rest_strict_gvisor", "torl REST, strict, gVisor"),
                       ("torl_grpc_session_gvisor", "torl gRPC, session, gVisor")):
        x = res[key]
        lines.append(f"| {label} | {x['print1_p50_seconds'] * 1000:.1f} ms | "
                     f"{x['print1_p50_seconds'] / base['print1_p50_seconds']:.2f} | "
                     f"{x['print1_p99_seconds'] * 1000:.0f} ms | {x['sympy_p50_seconds'] * 1000:.0f} ms | "
                     f"{x['throughput']['per_second']:.1f} | "
                     f"{x['throughput']['per_second'] / base['throughput']['per_second']:.2f} | "
                     f"{x['sequential_failures'] + x['throughput']['failures']} |")
    lines.append(f"| cold `runsc run` per request | {res['cold_runsc_print1_p50_seconds'] * 1000:.0f} ms | "
                 f"{res['cold_runsc_print1_p50_seconds'] / base['print1_p50_seconds']:.2f} | | | | | |")
    res["table"] = "\n".join(lines)
    print("\n" + res["table"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
