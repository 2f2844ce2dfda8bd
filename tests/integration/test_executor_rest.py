"""REST contract of the executor (bubblewrap backend here; gVisor is covered over gRPC): runs, batch,
SandboxFusion /run_code, auth with hot-reloaded keys, rate and concurrency limits, body size
limit, health/readiness/metrics, and schemathesis fuzzing against the OpenAPI document."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_binary
from tests.integration.executor_helpers import Executor, assert_still_serves, run_executor

pytestmark = pytest.mark.timeout(300)
KEY_A = "key-a-0123456789abcdef"
KEY_SLOW = "key-slow-0123456789abcdef"
KEYS = f"""
keys:
  - name: team-a
    key: "{KEY_A}"
    rate_per_second: 1000
    burst: 1000
    max_concurrent: 64
    allow_session: true
  - name: slow
    key: "{KEY_SLOW}"
    rate_per_second: 0.5
    burst: 2
    max_concurrent: 1
"""


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    require_binary("bwrap")
    tmp = tmp_path_factory.mktemp("rest-executor")
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    with run_executor(
        tmp, "sandbox.backend=bwrap", "pool.size=2", f"rest.api_keys_file={keys}", "rest.max_body_bytes=1048576"
    ) as e:
        e.keys_file = keys  # type: ignore[attr-defined]
        yield e


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_run_echoes_request_id_and_observation(ex: Executor) -> None:
    body = {"code": "print(input() * 2)", "stdin": "ab\n", "request_id": "req-1",
            "files": [{"path": "x.txt", "content_base64": "aGk="}]}
    r = httpx.post(f"{ex.rest_url}/v1/runs", json=body, headers=auth())
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["request_id"], d["status"], d["observation"]) == ("req-1", "ok", "abab")
    assert r.headers["x-request-id"] == "req-1"


def test_batch_and_bad_item(ex: Executor) -> None:
    runs = [{"code": f"print({i})"} for i in range(5)] + [{"code": "1", "language": "go"}]
    r = httpx.post(f"{ex.rest_url}/v1/runs:batch", json={"runs": runs}, headers=auth(), timeout=60)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["observation"] for x in res[:5]] == [str(i) for i in range(5)]
    assert res[5]["status"] == "rejected" and "supported: python" in res[5]["message"]


def test_errors_name_the_problem(ex: Executor) -> None:
    url = f"{ex.rest_url}/v1/runs"
    r = httpx.post(url, json={"code": "print(1)"})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    r = httpx.post(url, json={"code": "print(1)"}, headers=auth("nope-nope-nope-nope"))
    assert r.status_code == 401 and "unknown API key" in r.json()["error"]
    r = httpx.post(url, json={"code": "print(1)", "language": "rust"}, headers=auth())
    assert r.status_code == 400 and "supported: python, python3" in r.json()["error"]
    r = httpx.post(url, json={"code": "x" * (2 * 1024 * 1024)}, headers=auth())
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = httpx.post(url, json={"cod": "print(1)"}, headers=auth())
    assert r.status_code == 422 and "code" in r.json()["error"]
    r = httpx.post(url, json={"code": "1", "timeout_seconds": 999}, headers=auth())
    assert r.status_code == 400 and "timeout_seconds" in r.json()["error"]
    r = httpx.post(url, json={"code": "1", "isolation": "session"}, headers=auth(KEY_SLOW))
    assert r.status_code in (400, 429)


def test_rate_limit_gives_429_with_retry_after(ex: Executor) -> None:
    url = f"{ex.rest_url}/v1/runs"
    # burst 2 at 0.5/s: of 6 quick requests some must be refused, even if runs are slow (a token
    # refills every 2 s); the refusal itself carries Retry-After and names the limit.
    responses = [httpx.post(url, json={"code": "print(1)"}, headers=auth(KEY_SLOW)) for _ in range(6)]
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    assert all(int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"] for r in refused)


def test_keys_file_reloads_without_restart(ex: Executor) -> None:
    keys: Path = ex.keys_file  # type: ignore[attr-defined]
    new_key = "key-new-0123456789abcdef"
    url = f"{ex.rest_url}/v1/runs"
    assert httpx.post(url, json={"code": "print(1)"}, headers=auth(new_key)).status_code == 401
    keys.write_text(KEYS + f'  - name: newbie\n    key: "{new_key}"\n')
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline and status != 200:
        time.sleep(0.3)
        status = httpx.post(url, json={"code": "print(1)"}, headers=auth(new_key)).status_code
    assert status == 200
    keys.write_text("keys: [this is not valid")  # a broken edit keeps the previous keys
    time.sleep(1.5)
    assert httpx.post(url, json={"code": "print(1)"}, headers=auth(new_key)).status_code == 200
    keys.write_text(KEYS)


def test_sandboxfusion_run_code(ex: Executor) -> None:
    url = f"{ex.rest_url}/run_code"
    r = httpx.post(url, json={"code": "print(6*7)", "language": "python", "run_timeout": 5}, headers=auth())
    d = r.json()
    assert d["status"] == "Success" and d["run_result"]["stdout"] == "42\n" and d["run_result"]["return_code"] == 0
    assert d["run_result"]["status"] == "Finished" and d["run_result"]["execution_time"] > 0
    r = httpx.post(url, json={"code": "raise ValueError('bad')", "language": "python"}, headers=auth())
    d = r.json()
    assert d["status"] == "Failed" and d["run_result"]["return_code"] == 1
    assert "ValueError: bad" in d["run_result"]["stderr"]
    r = httpx.post(url, json={"code": "while True: pass", "language": "python", "run_timeout": 1}, headers=auth())
    assert r.json()["run_result"]["status"] == "TimeLimitExceeded"
    r = httpx.post(url, json={"code": "print(1)", "language": "cpp"}, headers=auth())
    assert r.status_code == 400 and "supported" in r.json()["error"]


def test_health_ready_metrics_and_weak_isolation_warning(ex: Executor) -> None:
    h = httpx.get(f"{ex.rest_url}/healthz").json()
    assert h["backend"] == "bwrap" and h["weak_isolation"] is True and "WEAKER" in h["warning"]
    assert httpx.get(f"{ex.rest_url}/readyz").status_code == 200
    m = httpx.get(f"{ex.rest_url}/metrics").text
    for name in ("torl_executor_requests_total", "torl_executor_run_duration_seconds_bucket",
                 "torl_executor_queue_wait_seconds_bucket", "torl_executor_pool_sandboxes",
                 "torl_executor_sandbox_start_seconds_bucket", "torl_executor_sandbox_recycled_total"):
        assert name in m
    assert 'caller="team-a"' in m
    assert "weak_isolation" in ex.log()


def test_concurrency_over_pool_size_none_lost(ex: Executor) -> None:
    def one(i: int) -> dict[str, object]:
        return httpx.post(f"{ex.rest_url}/v1/runs", json={"code": f"print({i})"}, headers=auth(), timeout=120).json()

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        res = list(pool.map(one, range(60)))
    assert [r["observation"] for r in res] == [str(i) for i in range(60)]
    assert_still_serves(ex.stub())


def test_schemathesis_fuzz(ex: Executor) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{ex.rest_url}/openapi.json")
    ops = [op.ok() for op in schema.get_all_operations()]
    checked = 0
    for op in ops:
        if op.method.upper() != "POST":
            continue

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **auth()}
            resp = case.call(base_url=ex.rest_url, timeout=60)
            assert resp.status_code < 500, (resp.status_code, resp.text[:300])
            assert resp.status_code in (200, 400, 413, 422, 429), resp.text[:300]
            if resp.status_code != 200:
                assert resp.json()["error"]

        fuzz()
        checked += 1
    assert checked == 3
    assert_still_serves(ex.stub())


def test_request_id_that_cannot_be_a_header_is_refused(ex: Executor) -> None:
    """The request id is echoed in X-Request-Id: a control character in it is a 422, not a dropped connection."""
    r = httpx.post(f"{ex.rest_url}/v1/runs", json={"code": "print(1)", "request_id": "\u001f"}, headers=auth())
    assert r.status_code == 422 and "request_id" in r.json()["error"], r.text
    r = httpx.post(f"{ex.rest_url}/v1/runs", json={"code": "print(1)", "request_id": "ok id-1"}, headers=auth())
    assert r.status_code == 200 and r.headers["x-request-id"] == "ok id-1"
