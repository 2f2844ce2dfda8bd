"""The NCCL weight transfer for real: the learner's NcclWeightSender (vLLM's trainer-side rendezvous and
packed broadcast, from GPU 0) into a rollout replica running CUDA vLLM on GPU 1 (NCCL allows one rank
per device). Runs the GPU smoke script's push phase for both paths on the random Qwen2-0.5B model.
Needs 2 NVIDIA GPUs; not run on the CPU machines this project is developed on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]


def test_one_push_over_grpc_and_over_nccl_reaches_a_cuda_vllm_replica(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs (learner rank 0 and the vLLM worker on separate devices)")
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    assert spec is not None and spec.loader is not None
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    from torl.rollout.tiny_model import build_tiny

    model = smoke.build_qwen2_05b(tmp_path / "qwen", build_tiny(None, 0))
    for transfer, gpu in (("grpc", "0"), ("nccl", "1")):
        r = smoke.push_once(transfer, model, tmp_path, gpu, 0.5, 400)
        assert r["ok"], r
        assert r["pause_seconds"] > 0 and r["push_seconds"] > 0, r
