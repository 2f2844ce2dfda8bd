"""The `torl eval` command: load datasets, reach (or start) a rollout service, evaluate, print.

With `--rollout HOST:PORT` it uses running services; otherwise it starts an executor and a
rollout serving `--model` as local processes on loopback and stops them afterwards.

Besides the shipped benchmarks and user files, the dataset name `arith` (or `arith:SEED:SIZE`)
is the demo's held-out "What is A*B+C?" set, the very problems the learner evaluates on with
`data.dataset: arith` (default seed 0, 64 problems), so a checkpoint before and after RL can be
compared on the demo task; `torl eval-compare` puts such runs side by side.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from torl.common.datasets import DatasetError, Problem, load_benchmark
from torl.evaluation.runner import EvalOptions, evaluate

ARITH = "arith"
ARITH_DEFAULT_SEED = 0  # learner data.seed default, as in configs/demo-cpu.yaml
ARITH_DEFAULT_SIZE = 64  # learner data.arith_eval_size default, as in configs/demo-cpu.yaml


def parse_arith(name: str) -> tuple[int, int] | None:
    """(seed, size) when `name` is `arith` or `arith:SEED:SIZE`; None for any other dataset name."""
    if name != ARITH and not name.startswith(ARITH + ":"):
        return None
    if name == ARITH:
        return ARITH_DEFAULT_SEED, ARITH_DEFAULT_SIZE
    parts = name.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or int(parts[2]) < 1:
        raise DatasetError(f"dataset {name!r}: expected arith or arith:SEED:SIZE with integers SEED >= 0, SIZE >= 1")
    return int(parts[1]), int(parts[2])


def arith_problems(seed: int, size: int) -> list[Problem]:
    """The learner's held-out arith problems for `data.seed=seed`, `data.arith_eval_size=size`."""
    from torl.learner.datasets import ArithDataset

    held = ArithDataset(seed, 0, size).eval()
    return [Problem(p.id, p.problem, p.answer, ARITH) for p in held]


def load_problems(datasets: list[str], limit: int, data_dir: Path | None) -> list[Problem]:
    problems: list[Problem] = []
    for name in datasets:
        arith = parse_arith(name)
        rows = arith_problems(*arith) if arith is not None else load_benchmark(name, data_dir)
        problems.extend(rows[:limit] if limit > 0 else rows)
    return problems


def _progress(done: int, total: int) -> None:
    step = max(1, total // 20)
    if done == total or done % step == 0:
        print(f"  generated {done}/{total}", file=sys.stderr, flush=True)


def run_eval(
    model: str,
    datasets: list[str],
    opts: EvalOptions,
    out_dir: Path,
    limit: int = 0,
    data_dir: Path | None = None,
    rollout_target: str | None = None,
    executor_target: str | None = None,
    start_timeout: float = 600.0,
) -> str:
    """Evaluate and return the Markdown table (also written to out_dir/results.md)."""
    problems = load_problems(datasets, limit, data_dir)
    label = Path(model).name if model else (rollout_target or "model")
    print(f"evaluating {label} on {len(problems)} problems x {opts.k} samples", file=sys.stderr)
    if rollout_target:
        _, table = evaluate(rollout_target, problems, opts, out_dir, label, _progress)
        return table

    from torl.cli.local import Supervisor, free_port

    with Supervisor(out_dir / "logs") as sup:
        if executor_target is None:
            ex_port = free_port()
            rest = ["--set", f"rest.port={free_port()}"]
            executor = sup.start_service("executor", ex_port, ["--metrics-port", "0", *rest])
            sup.wait_healthy(executor, start_timeout)
            executor_target = f"127.0.0.1:{ex_port}"
        ro_port = free_port()
        rollout = sup.start_service(
            "rollout",
            ro_port,
            [
                "--metrics-port",
                "0",
                "--set",
                f"engine.model_dir={model}",
                "--set",
                f"deps.executor_target={executor_target}",
                "--set",
                f"loop.max_tool_calls={opts.max_tool_calls}",
                "--set",
                f"loop.max_prompt_tokens={opts.max_prompt_tokens}",
            ],
        )
        t0 = time.monotonic()
        sup.wait_healthy(rollout, start_timeout)
        print(f"  services up in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        _, table = evaluate(f"127.0.0.1:{ro_port}", problems, opts, out_dir, label, _progress)
    return table
