"""`torl up`: every service as a local process on loopback, with their ports printed."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from torl.cli.local import Supervisor, free_port

SERVICE_ORDER = ("executor", "reward", "rollout", "learner")


def run_up(run_dir: Path, check: bool, timeout: float = 300.0) -> int:
    """Start all services; with `check`, print their health and stop; else run until Ctrl-C."""
    ports = {name: free_port() for name in SERVICE_ORDER}
    with Supervisor(run_dir / "logs") as sup:
        children = [sup.start_service(name, ports[name], ["--metrics-port", "0"]) for name in SERVICE_ORDER]
        for child in children:
            sup.wait_healthy(child, timeout)
            print(f"  {child.name:<9} SERVING  grpc {child.grpc_target}  log {child.log_path}", flush=True)
        if check:
            print("all services healthy; stopping (--check)")
            return 0
        print("all services healthy; Ctrl-C stops them")
        stopping = False

        def _stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stopping:
                sup.check_alive()
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        print("stopping services", file=sys.stderr)
    return 0
