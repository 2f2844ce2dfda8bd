"""`torl up` starts its own Redis and every service, and Ctrl-C (SIGINT) stops all of them: no
process it started (services, vLLM workers, sandboxes, redis-server) is left behind. It is started
the way a shell starts a background job or nohup does, with SIGINT ignored: `torl up` installs its
own handler, so Ctrl-C still stops it. A failing test stops the whole stack too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, require_binary

pytestmark = [pytest.mark.timeout(600), pytest.mark.gvisor]


def descendants(root: int) -> set[int]:
    """PIDs below `root`, from /proc (parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_stack(proc: subprocess.Popen[str]) -> None:
    """After a failure: SIGTERM `torl up` (it stops its services), then SIGKILL whatever is left of it and them."""
    if proc.poll() is not None:
        return
    started = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pid in started:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # each service leads its own session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell does for `cmd &` and nohup


def test_up_starts_everything_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    require_binary("redis-server")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torl.cli.main", "up", "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env, preexec_fn=ignore_sigint,
    )
    try:
        check_up_and_ctrl_c(proc, tmp_path)
    finally:
        stop_stack(proc)


def check_up_and_ctrl_c(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "all services healthy" in line:
            break
    text = "".join(lines)
    assert "all services healthy" in text, text
    assert "starting redis-server on 127.0.0.1:" in text
    for name in ("executor", "reward", "rollout", "learner"):
        assert f"starting {name}" in text and "SERVING" in text
    started = descendants(proc.pid)
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in started if alive(p)}
    assert "redis-server" in names
    assert (tmp_path / "redis" / "appendonlydir").is_dir() or any((tmp_path / "redis").glob("*.aof*"))
    # Where everything listens, for scripts: every service's /metrics answers with its own families.
    endpoints = json.loads((tmp_path / "endpoints.json").read_text())
    assert set(endpoints["services"]) == {"executor", "reward", "rollout", "learner"}
    assert endpoints["redis"].startswith("redis://127.0.0.1:") and endpoints["prometheus"] == ""
    targets = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
    for group in targets:
        name = group["labels"]["service"]
        assert group["targets"] == [endpoints["services"][name]["metrics"]]
        with urllib.request.urlopen(f"http://{group['targets'][0]}/metrics", timeout=10) as resp:
            assert f"torl_{name}_" in resp.read().decode(), name

    proc.send_signal(signal.SIGINT)
    rc = proc.wait(60)
    assert rc == 0, proc.stdout.read()
    time.sleep(1.0)
    left = [p for p in started if alive(p)]
    assert not left, [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:200] for p in left]
