"""Fault-injection helpers for the end-to-end reliability tests: our own redis-server that can be
restarted gracefully or killed -9 on the same port and data dir, a loopback TCP proxy that cuts a
connection halfway, resource counts of a process tree (fds, RSS, processes), the gVisor sandboxes
of one state dir, Prometheus scrapes, and the learner's audit trail of applied groups.

Everything here acts only on processes and sandboxes the tests started themselves (own ports, own
state dirs, own name prefixes), never on anything else running on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, free_port, require_binary


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll `cond` until true; the seconds it took. AssertionError naming `what` on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- Redis ------------------------------------------------------------------------------------------
@dataclass
class RedisServer:
    """A redis-server on 127.0.0.1:port with AOF (appendfsync everysec) in its own dir."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        binary = require_binary("redis-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "redis.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                 "--maxmemory-policy", "noeviction", "--daemonize", "no"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        wait_for(self.ping, timeout, f"redis on port {self.port}", 0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop_graceful(self, timeout: float = 30.0) -> None:
        """SIGTERM: redis fsyncs the AOF and exits cleanly."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- a proxy that breaks a stream halfway ----------------------------------------------------------
class CuttingProxy:
    """Loopback TCP proxy to `target_port`. The first `cut_connections` connections are closed
    (both directions, RST) once `cut_after_bytes` bytes went client → server; later ones pass."""

    def __init__(self, target_port: int, cut_after_bytes: int, cut_connections: int = 1) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.cuts_left = cut_connections
        self.cuts_done = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="cutting-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cut = self.cuts_left > 0
                if cut:
                    self.cuts_left -= 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut and sent + len(data) >= self.cut_after_bytes:
                    dst.sendall(data[: max(0, self.cut_after_bytes - sent)])
                    with self._lock:
                        self.cuts_done += 1
                    for s in (src, dst):  # RST both ways: the stream dies mid-message
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()


# -- resource counts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TreeUsage:
    """Resources held by a process and all its descendants at one moment."""

    processes: int
    open_fds: int
    rss_bytes: int


def tree_usage(pid: int) -> TreeUsage:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return TreeUsage(0, 0, 0)
    fds = rss = alive = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            fds += p.num_fds()
            rss += p.memory_info().rss
            alive += 1
    return TreeUsage(alive, fds, rss)


def process_usage(pid: int) -> TreeUsage:
    """The same counts for one process alone (a service's own fds, without its sandboxes')."""
    try:
        p = psutil.Process(pid)
        return TreeUsage(1, p.num_fds(), p.memory_info().rss)
    except psutil.NoSuchProcess:
        return TreeUsage(0, 0, 0)


def runsc_sandboxes(state_dir: Path, prefix: str) -> list[str]:
    """Container names with `prefix` in the executor's own runsc root (state_dir/runsc)."""
    root = state_dir / "runsc"
    if not root.is_dir():
        return []
    out = subprocess.run(["runsc", "--root", str(root), "list", "-quiet"], capture_output=True, text=True,
                         check=False, timeout=30)
    return sorted(n for n in out.stdout.split() if n.startswith(prefix + "-"))


def processes_mentioning(needle: str) -> list[int]:
    """Pids whose command line contains `needle` (a test's own unique prefix or dir)."""
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(needle in a for a in p.info["cmdline"] or []):
                pids.append(int(p.info["pid"]))
    return pids


# -- metrics ---------------------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """{name{label="v",...}: value} of a Prometheus /metrics page (labels sorted by name)."""
    text = httpx.get(url, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the learner's side of a run -------------------------------------------------------------------
def learner_env() -> dict[str, str]:
    """The environment a test gives a learner it launches (as `torl train` does): the shared DeepSpeed
    extension cache and one OpenMP thread."""
    return {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
            "OMP_NUM_THREADS": "1"}


def applied_rows(out: Path) -> list[dict[str, Any]]:
    """The learner's audit trail (<out>/applied.jsonl): one row per applied step and incarnation."""
    path = out / "applied.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lineage(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per step, the row of the newest incarnation: what the surviving weights contain."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["step"] not in best or r["incarnation"] >= best[r["step"]]["incarnation"]:
            best[r["step"]] = r
    return best


def check_lineage(out: Path, run_id: str, steps: int, prompts: int, train_size: int) -> dict[int, dict[str, Any]]:
    """The surviving lineage in the learner's output dir `out` trains steps 1..steps on exactly the first
    steps x prompts feed positions, each once; returns it (step -> the applied row)."""
    final = lineage(applied_rows(out))
    assert sorted(final) == list(range(1, steps + 1)), sorted(final)
    ids = [g for s in sorted(final) for g in final[s]["group_ids"]]
    assert len(ids) == len(set(ids)), "a group was applied twice in the surviving lineage"
    # Prompt ids are <run>-e<epoch>-<feed position>; the feed wraps into epoch 1 after the train set.
    expected = {f"{run_id}-e{i // train_size}-{i}" for i in range(steps * prompts)}
    assert set(ids) == expected, f"a prompt was skipped or lost: {sorted(expected ^ set(ids))[:10]}"
    return final
