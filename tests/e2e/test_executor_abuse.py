"""Hostile callers of the executor (gVisor, REST and gRPC with API keys required).

- auth: a missing, malformed or wrong key gets 401 / UNAUTHENTICATED with a message naming the
  problem; over the rate limit and over the concurrency limit gets 429 (Retry-After) /
  RESOURCE_EXHAUSTED; the rejected calls never run code.
- tenants: while caller A's run is alive (a secret in its stdin, its work dir, /tmp, its env and
  a background process's argv), caller B's code scans every file under /tmp, /proc and its own
  view of the process table and finds nothing of A's, neither during A's run nor after it.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.conftest import require_binary
from tests.integration.executor_helpers import Executor, run_executor
from torl.v1 import common_pb2, executor_pb2, executor_pb2_grpc

pytestmark = [pytest.mark.timeout(420), pytest.mark.gvisor]
KEY_A = "team-a-key-0123456789abcdef"
KEY_B = "team-b-key-0123456789abcdef"
KEY_TIGHT = "tight-key-0123456789abcdef"
KEYS = f"""
keys:
  - name: team-a
    key: "{KEY_A}"
    rate_per_second: 100
    burst: 100
    max_concurrent: 8
  - name: team-b
    key: "{KEY_B}"
    rate_per_second: 100
    burst: 100
    max_concurrent: 8
  - name: tight
    key: "{KEY_TIGHT}"
    rate_per_second: 0.2
    burst: 2
    max_concurrent: 1
"""
SECRET = "S3CRET-of-team-a-7f1c2e"

# Caller A: leaves its secret everywhere a run can put it, then stays alive while B looks.
HOLDER = """
import os, subprocess, sys, time
secret = sys.stdin.read().strip()
os.environ["TEAM_A_TOKEN"] = secret
open("secret.txt", "w").write(secret)
open("/tmp/team-a-" + secret, "w").write(secret)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", secret], env=dict(os.environ))
print("holding", os.getcwd(), flush=True)
time.sleep(12)
"""

# Caller B: looks for that secret in every file it can read under /tmp and /proc, and lists the
# processes it can see. A control plants a marker of its own first: the scan must find that one.
SCANNER = f"""
import os
needle = {SECRET!r}.encode()
control = b"CONTROL-" + os.urandom(6).hex().encode()
open("/tmp/control.txt", "wb").write(control)
hits, files, pids, seen_control = [], 0, [], 0
for top in ("/tmp", "/proc"):
    for root, dirs, names in os.walk(top):
        if root.startswith("/proc/") and root.count("/") > 3:
            dirs[:] = []
        for n in names:
            p = os.path.join(root, n)
            if top == "/proc" and n not in ("cmdline", "environ", "status", "maps"):
                continue
            try:
                with open(p, "rb") as f:
                    data = f.read(1 << 20)
            except OSError:
                continue
            files += 1
            seen_control += control in data
            if needle in data or needle in n.encode():
                hits.append(p)
        if needle in root.encode():
            hits.append(root)
pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
print("hits", len(hits), hits[:5], "files", files, "pids", len(pids), "control", seen_control)
"""


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    require_binary("runsc")
    tmp = tmp_path_factory.mktemp("abuse")
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    with run_executor(tmp, "sandbox.backend=gvisor", "pool.size=2", f"rest.api_keys_file={keys}",
                      "grpc_api_keys_required=true", f"sandbox.name_prefix=e2e-abuse-{os.getpid()}",
                      timeout=240) as e:
        yield e


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_rest_auth_and_limits(ex: Executor) -> None:
    url = f"{ex.rest_url}/v1/runs"
    marker = "print('RAN')"
    cases = [({}, "missing API key"), ({"Authorization": "Basic abc"}, "malformed Authorization"),
             (bearer("wrong-key-0123456789abcdef"), "unknown API key"), ({"Authorization": "Bearer"}, "")]
    for headers, needle in cases:
        r = httpx.post(url, json={"code": marker}, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert needle in r.json()["error"] and "RAN" not in r.text
    # Concurrency: a second run while the first one of a max_concurrent=1 key is still going.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(httpx.post, url, json={"code": "import time; time.sleep(4); print('slow')"},
                           headers=bearer(KEY_TIGHT), timeout=60)
        time.sleep(1.5)
        second = httpx.post(url, json={"code": marker}, headers=bearer(KEY_TIGHT), timeout=30)
        assert second.status_code == 429, second.text
        assert "in flight" in second.json()["error"] and int(second.headers["retry-after"]) >= 1
        assert slow.result().json()["observation"] == "slow"
    # Rate: burst 2 (one token already spent above, one more at most), then 429 with Retry-After.
    codes = [httpx.post(url, json={"code": marker}, headers=bearer(KEY_TIGHT), timeout=30) for _ in range(3)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert "rate limit" in limited[-1].json()["error"] and int(limited[-1].headers["retry-after"]) >= 1
    # Another tenant is not affected by team "tight" being limited.
    ok = httpx.post(url, json={"code": "print(6*7)"}, headers=bearer(KEY_A), timeout=60)
    assert ok.status_code == 200 and ok.json()["observation"] == "42"


def test_grpc_requires_a_key_when_configured(ex: Executor) -> None:
    stub = executor_pb2_grpc.ExecutorStub(grpc.insecure_channel(ex.grpc_target))
    req = executor_pb2.ExecuteRequest(code="print('RAN')")
    wrong = (("authorization", "Bearer nope-nope-nope-nope"),)
    for md, needle in (((), "missing API key"), (wrong, "unknown API key")):
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(req, metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and needle in (e.value.details() or "")
    r = stub.Execute(req, metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=60)
    assert r.status == common_pb2.TOOL_STATUS_OK and r.observation == "RAN"


def test_one_caller_cannot_observe_another_callers_runs(ex: Executor) -> None:
    url = f"{ex.rest_url}/v1/runs"

    def scan() -> str:
        r = httpx.post(url, json={"code": SCANNER, "timeout_seconds": 30}, headers=bearer(KEY_B), timeout=90)
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text
        return str(r.json()["stdout"])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(httpx.post, url, json={"code": HOLDER, "stdin": SECRET + "\n", "timeout_seconds": 30},
                             headers=bearer(KEY_A), timeout=90)
        time.sleep(4.0)  # A is holding its secret now
        assert not holder.done()
        during = scan()
        a = holder.result()
    assert a.status_code == 200 and a.json()["stdout"].startswith("holding"), a.text
    after = scan()
    for out in (during, after):
        assert out.startswith("hits 0 [] files "), out
        files = int(out.split("files ")[1].split()[0])
        control = int(out.split("control ")[1].split()[0])
        assert files > 0 and control >= 1, f"the scan did not find its own marker, so it proved nothing: {out}"
    # And A's own view: its secret file is gone from the next run of A (strict: fresh work dir, /tmp wiped).
    r = httpx.post(url, json={"code": SCANNER.replace("team-a", "x")}, headers=bearer(KEY_A), timeout=90)
    assert r.json()["stdout"].startswith("hits 0 [] "), r.text
    assert Path(ex.log_path).is_file()
