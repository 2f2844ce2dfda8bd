"""The pretraining corpus, its cache key and the probe's grading of responses (no model needed)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import replace

from torl.learner.pretrain import (
    OUTCOMES,
    PretrainSpec,
    ProbeResult,
    Stage,
    _arith_value,
    busy_cores,
    classify,
    train_threads,
    transcript_parts,
)
from torl.rollout.program import STOP_STRING


def test_tool_transcript_trains_only_the_models_tokens_and_copies_the_output() -> None:
    parts = transcript_parts(random.Random(3), tool=True)
    assert [trained for _, trained in parts] == [False, True, False, True]
    prompt, code, observation, answer = (text for text, _ in parts)
    problem = prompt.rsplit("\n", 3)[-3]
    expr = problem.removeprefix("What is ").removesuffix("?")
    assert code.endswith(f"```python\nprint({expr})\n```\n{STOP_STRING}")
    value = _arith_value(f"print({expr})")
    assert value is not None and observation == f"\n{value}\n```\n"
    assert answer.startswith(f"The answer is \\boxed{{{value}}}.")


def test_arith_value_computes_only_integer_arithmetic() -> None:
    assert _arith_value("print(12*34+56)") == "464"
    assert _arith_value("print(12*34-56)") == "352"
    assert _arith_value("print(1/2)") is None
    assert _arith_value("import os") is None
    assert _arith_value("print(12*34+)") is None


def test_classify_splits_errors_by_kind() -> None:
    q, a = "What is 12*34+56?", "464"
    tool = "Let me compute it with Python.\n```python\nprint({})\n```\n```output\n{}\n```\nThe answer is \\boxed{{{}}}."
    assert classify(q, a, tool.format("12*34+56", a, a)) == "right"
    assert classify(q, a, tool.format("12*34+56", a, "446")) == "answer_wrong"
    assert classify(q, a, tool.format("12*43+56", "572", "572")) == "code_wrong"
    assert classify(q, a, "The result is \\boxed{500}.") == "no_tool"
    assert classify(q, a, "It is \\boxed{464}.") == "direct_right"


def test_probe_result_rates() -> None:
    counts = dict.fromkeys(OUTCOMES, 0) | {"right": 6, "answer_wrong": 1, "code_wrong": 1, "no_tool": 2}
    r = ProbeResult(1.0, 10, counts)
    assert r.tool_use_rate == 0.8
    assert r.accuracy == 0.6
    assert r.tool_accuracy == 0.75
    assert "tool accuracy 0.750" in r.line()


def test_digest_changes_with_the_recipe() -> None:
    spec = PretrainSpec()
    base = spec.digest("kit")
    assert spec.digest("other-kit") != base
    assert replace(spec, batch_size=spec.batch_size + 1).digest("kit") != base
    assert replace(spec, stages=(*spec.stages, Stage(0.5, 1, 1e-4))).digest("kit") != base
    assert replace(spec, corpus_version=spec.corpus_version + 1).digest("kit") != base


def test_pretraining_takes_one_thread_while_other_work_holds_the_cores() -> None:
    cores = os.cpu_count() or 1
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        assert busy_cores() >= cores / 2
        assert train_threads() == 1
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert 0.0 <= busy_cores(0.1) <= cores
