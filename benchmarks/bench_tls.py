"""What TLS between services costs, against plaintext measured in the same run (loopback, real gRPC).

Three modes, each through torl's own server bootstrap (`start_server`, grpc.tls) and client helper
(`open_channel`, TlsClientSettings): plaintext (the baseline), TLS, and mTLS. Certificates come
from a throwaway CA (ECDSA P-256, tests/tls_certs.py).

- unary: sequential grpc.health Check calls on one open channel (p50/p99 latency);
- score: `torl reward serve` in a subprocess, Score calls with 8 in flight (calls/s), the
  rollout -> reward hop;
- connect: a new channel per call (handshake + one Check), what a reconnect or a new replica costs;
- bulk: UpdateWeights client streams of 4 MiB chunks into a servicer that only counts bytes
  (MiB/s), the learner -> rollout weight push.

    nice .venv/bin/python benchmarks/bench_tls.py [--bulk-mib 512]

Writes benchmarks/results/bench_tls.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import free_port, torl_cmd, wait_for_health  # noqa: E402
from tests.tls_certs import Pki, make_pki  # noqa: E402
from torl.common.config import GrpcServerSettings, TlsClientSettings, TlsSettings  # noqa: E402
from torl.common.grpc_client import open_channel  # noqa: E402
from torl.common.grpc_server import ServiceBinding, start_server  # noqa: E402
from torl.common.tls import channel_credentials  # noqa: E402
from torl.v1 import reward_pb2, reward_pb2_grpc, rollout_pb2, rollout_pb2_grpc  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bench_tls.json"
MODES = ("plaintext", "tls", "mtls")
CHUNK = 4 * 1024 * 1024


def server_tls(pki: Pki, mode: str) -> TlsSettings:
    if mode == "plaintext":
        return TlsSettings()
    return TlsSettings(enabled=True, cert_file=str(pki.server_cert), key_file=str(pki.server_key),
                       ca_file=str(pki.ca) if mode == "mtls" else "")


def client_tls(pki: Pki, mode: str) -> TlsClientSettings:
    if mode == "plaintext":
        return TlsClientSettings()
    extra = {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)} if mode == "mtls" else {}
    return TlsClientSettings(enabled=True, ca_file=str(pki.ca), **extra)


class CountingRollout(rollout_pb2_grpc.RolloutServicer):
    """UpdateWeights that only counts the bytes (the transport, not the weight swap)."""

    async def UpdateWeights(self, request_iterator: AsyncIterator[rollout_pb2.WeightChunk],
                            context: grpc.aio.ServicerContext) -> rollout_pb2.UpdateWeightsResponse:
        n = 0
        async for chunk in request_iterator:
            n += len(chunk.data)
        return rollout_pb2.UpdateWeightsResponse(bytes=n)


class InProcessServer:
    """torl's server bootstrap (health + CountingRollout) on its own event loop thread."""

    def __init__(self, tls: TlsSettings) -> None:
        self.port = free_port()
        self._settings = GrpcServerSettings(host="127.0.0.1", port=self.port, max_message_mb=64, tls=tls)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("server did not start")

    async def _main(self) -> None:
        binding = ServiceBinding("torl.v1.Rollout", CountingRollout(), rollout_pb2_grpc.add_RolloutServicer_to_server)
        running = await start_server(self._settings, [binding])
        self._started.set()
        await self._stop.wait()
        await running.server.stop(None)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_unary(target: str, tls: TlsClientSettings, calls: int) -> dict[str, float]:
    with open_channel(target, aio=False, tls=tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        req = health_pb2.HealthCheckRequest()
        for _ in range(50):
            stub.Check(req, timeout=5)
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            stub.Check(req, timeout=5)
            lat.append(time.perf_counter() - t0)
    return {"p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * pct(lat, 0.99)}


def bench_connect(target: str, tls: TlsClientSettings, n: int) -> dict[str, float]:
    channel_credentials(tls)  # file reads out of the loop: they are per process, not per connection
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with open_channel(target, aio=False, tls=tls) as ch:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        times.append(time.perf_counter() - t0)
    return {"mean_ms": 1000 * statistics.mean(times), "p50_ms": 1000 * statistics.median(times)}


def bench_bulk(target: str, tls: TlsClientSettings, mib: int, rounds: int) -> dict[str, float]:
    payload = os.urandom(CHUNK)

    def chunks() -> Iterator[rollout_pb2.WeightChunk]:
        for _ in range(mib * 1024 * 1024 // CHUNK):
            yield rollout_pb2.WeightChunk(data=payload)

    best = 0.0
    with open_channel(target, aio=False, tls=tls, max_message_mb=64) as ch:
        stub = rollout_pb2_grpc.RolloutStub(ch)
        for _ in range(rounds):
            t0 = time.perf_counter()
            resp = stub.UpdateWeights(chunks(), timeout=600)
            dt = time.perf_counter() - t0
            assert resp.bytes == mib * 1024 * 1024, resp.bytes
            best = max(best, mib / dt)
    return {"mib_per_s": best}


def start_reward(pki: Pki, mode: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    t = server_tls(pki, mode)
    sets: list[str] = []
    if t.enabled:
        sets = ["--set", "grpc.tls.enabled=true", "--set", f"grpc.tls.cert_file={t.cert_file}",
                "--set", f"grpc.tls.key_file={t.key_file}"]
        if t.ca_file:
            sets += ["--set", f"grpc.tls.ca_file={t.ca_file}"]
    log = open(tmp / f"reward-{mode}.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        torl_cmd("reward", "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *sets),
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    target = f"127.0.0.1:{port}"
    c = client_tls(pki, mode)
    creds = channel_credentials(c)
    wait_for_health(target, 60, credentials=creds)
    return proc, target


def bench_score(target: str, tls: TlsClientSettings, calls: int) -> dict[str, float]:
    req = reward_pb2.ScoreRequest(id="x", response="So the answer is $\\boxed{4}$.", reference="4")
    with open_channel(target, aio=False, tls=tls) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)
        for _ in range(20):
            stub.Score(req, timeout=30)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _i: stub.Score(req, timeout=30).correct, range(calls)))
        dt = time.perf_counter() - t0
    assert all(results)
    return {"calls_per_s": calls / dt}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric the best of the repeats (lowest *_ms, highest throughput): the machine is shared."""
    out: dict[str, Any] = {}
    for part in runs[0]:
        out[part] = {}
        for key in runs[0][part]:
            values = [r[part][key] for r in runs]
            out[part][key] = min(values) if key.endswith("_ms") else max(values)
    return out


def measure(pki: Pki, mode: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    server = InProcessServer(server_tls(pki, mode))
    target = f"127.0.0.1:{server.port}"
    c = client_tls(pki, mode)
    try:
        r: dict[str, Any] = {
            "unary": bench_unary(target, c, args.unary_calls),
            "connect": bench_connect(target, c, args.connects),
            "bulk": bench_bulk(target, c, args.bulk_mib, args.bulk_rounds),
        }
    finally:
        server.close()
    proc, rtarget = start_reward(pki, mode, tmp)
    try:
        r["score"] = bench_score(rtarget, c, args.score_calls)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unary-calls", type=int, default=3000)
    ap.add_argument("--connects", type=int, default=200)
    ap.add_argument("--bulk-mib", type=int, default=512)
    ap.add_argument("--bulk-rounds", type=int, default=2)
    ap.add_argument("--score-calls", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="Rounds over all modes, interleaved; best of each.")
    args = ap.parse_args()

    out: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "grpc": grpc.__version__, "args": vars(args),
                           "modes": {}}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pki = make_pki(tmp / "pki")
        for rep in range(args.repeats):
            for mode in MODES:
                r = measure(pki, mode, tmp, args)
                runs[mode].append(r)
                print(f"[{rep + 1}/{args.repeats}] {mode:9s} unary p50 {r['unary']['p50_ms']:.3f} ms "
                      f"p99 {r['unary']['p99_ms']:.3f} ms | connect {r['connect']['mean_ms']:.2f} ms | "
                      f"bulk {r['bulk']['mib_per_s']:.0f} MiB/s | score {r['score']['calls_per_s']:.0f} calls/s",
                      flush=True)
    for mode in MODES:
        out["modes"][mode] = best(runs[mode])

    base = out["modes"]["plaintext"]
    ratios: dict[str, dict[str, float]] = {}
    for mode in ("tls", "mtls"):
        m = out["modes"][mode]
        ratios[mode] = {
            "unary_p50_latency": m["unary"]["p50_ms"] / base["unary"]["p50_ms"],
            "connect_time": m["connect"]["mean_ms"] / base["connect"]["mean_ms"],
            "bulk_throughput": m["bulk"]["mib_per_s"] / base["bulk"]["mib_per_s"],
            "score_throughput": m["score"]["calls_per_s"] / base["score"]["calls_per_s"],
        }
        x = ratios[mode]
        print(f"{mode} / plaintext: unary p50 latency x{x['unary_p50_latency']:.2f}, "
              f"connect time x{x['connect_time']:.2f}, bulk throughput x{x['bulk_throughput']:.2f}, "
              f"score throughput x{x['score_throughput']:.2f}")
    out["ratios_vs_plaintext"] = ratios
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
