"""Pretraining end to end on the kit's tokenizer/config: stamp, cache reuse, a new key for a new recipe,
and the probe answering through the two-round loop (a few steps only: no accuracy is expected)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from torl.learner.datasets import ArithDataset
from torl.learner.pretrain import OUTCOMES, STAMP, PretrainSpec, Stage, build_base, pretrain, probe


@pytest.mark.slow
def test_pretrain_caches_by_recipe_and_probe_grades_every_response(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORL_CACHE_DIR", str(tmp_path / "kit"))
    base = build_base(PretrainSpec())  # from scratch: the kit's tokenizer and config, untrained weights
    assert json.loads((base / "torl_tiny_model.json").read_text())["spec"]["train_steps"] == 0
    spec = PretrainSpec(stages=(Stage(0.85, 3, 1e-3, 0.9), Stage(0.5, 2, 5e-4)), batch_size=2, seq_len=128)
    out = pretrain(base, tmp_path / "pre", spec)
    stamp = json.loads((out / STAMP).read_text())
    assert len(stamp["digest"]) == 16
    assert stamp["cpu_seconds"] > 0 and stamp["cpu_seconds_per_step"] > 0
    weights = (out / "model.safetensors").stat().st_mtime_ns
    assert pretrain(base, tmp_path / "pre", spec) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == weights  # cached: not retrained
    other = replace(spec, stages=(Stage(0.85, 4, 1e-3, 0.9),))
    pretrain(base, tmp_path / "pre", other)
    assert json.loads((out / STAMP).read_text())["digest"] != stamp["digest"]
    assert (out / "model.safetensors").stat().st_mtime_ns != weights  # a new recipe retrains

    held = [(p.problem, p.answer) for p in ArithDataset(0, 0, 6).eval()]
    for temperature in (0.0, 1.0):
        r = probe(out, held, temperature, max_new_tokens=40)
        assert r.samples == 6 and sum(r.counts.values()) == 6 and set(r.counts) == set(OUTCOMES)
