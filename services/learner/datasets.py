"""Datasets and verifiers: what the learner feeds as prompts, and an optional plugin interface.

A dataset gives training and held-out problems ({id, problem, answer}). Built in: `jsonl` (files
in the project's data format) and `arith`, the demo's synthetic A*B+C task with 2-digit numbers (4-digit answers),
which a tiny model solves reliably only with code. A user plugs in their own with
`data.dataset: "my_pkg.my_mod:make"`, where `make(cfg: DataSettings)` returns a `Dataset`; if
that object also has `verify(response_text, answer) -> float | None`, the learner rescores every
trajectory with it (None keeps the reward service's score).

`FeedOrder` fixes the order prompts are issued in: epoch e is a permutation drawn with seed + e,
so the position of the feed (saved in checkpoints) is all that is needed to continue identically.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from torl.common.datasets import Problem as Problem  # the one Problem type, re-exported for the learner
from torl.common.datasets import read_problems
from torl.learner.config import DataSettings


class Dataset(Protocol):
    name: str

    def train(self) -> Sequence[Problem]: ...

    def eval(self) -> Sequence[Problem]: ...


@runtime_checkable
class Verifier(Protocol):
    def verify(self, response_text: str, answer: str) -> float | None: ...


def read_jsonl(path: str | Path, dataset: str) -> list[Problem]:
    """Problems from a JSONL/Parquet file: `torl.common.datasets.read_problems`, the one reader."""
    return read_problems(Path(path), source=dataset)


class JsonlDataset:
    def __init__(self, train_path: str, eval_path: str) -> None:
        self.name = Path(train_path).stem if train_path else "jsonl"
        self._train = read_jsonl(train_path, self.name) if train_path else []
        self._eval = read_jsonl(eval_path, Path(eval_path).stem) if eval_path else []

    def train(self) -> Sequence[Problem]:
        return self._train

    def eval(self) -> Sequence[Problem]:
        return self._eval


ARITH_FACTOR_MIN = 32  # 32*32+10 = 1034 and 99*99+99 = 9900: every answer has 4 digits


def arith_problem(rng: random.Random) -> tuple[str, str]:
    """'What is A*B+C?' with A, B in 32..99 and C in 10..99, and its answer (always 4 digits).

    Fixed-length answers put the answer's digits at a fixed offset after the tool output, so the
    demo's ~1M-parameter model learns to copy them in far fewer pretraining steps (docs/demo.md)."""
    a, b = rng.randint(ARITH_FACTOR_MIN, 99), rng.randint(ARITH_FACTOR_MIN, 99)
    c = rng.randint(10, 99)
    return f"What is {a}*{b}+{c}?", str(a * b + c)


class ArithDataset:
    """The demo task: 'What is A*B+C?' (arith_problem); held-out problems never occur in train."""

    name = "arith"

    def __init__(self, seed: int, train_size: int, eval_size: int) -> None:
        rng = random.Random(10_007 + seed)
        held: dict[str, str] = {}
        while len(held) < eval_size:
            q, a = arith_problem(rng)
            held[q] = a
        self._eval = [Problem(f"arith-eval-{i}", q, a, "arith-eval") for i, (q, a) in enumerate(held.items())]
        train: list[Problem] = []
        while len(train) < train_size:
            q, a = arith_problem(rng)
            if q not in held:
                train.append(Problem(f"arith-{len(train)}", q, a, "arith"))
        self._train = train

    def train(self) -> Sequence[Problem]:
        return self._train

    def eval(self) -> Sequence[Problem]:
        return self._eval


def load_dataset(cfg: DataSettings) -> Dataset:
    """The configured dataset; a plugin is 'module:callable' taking the DataSettings."""
    if cfg.dataset == "jsonl":
        return JsonlDataset(cfg.train_path, cfg.eval_path)
    if cfg.dataset == "arith":
        return ArithDataset(cfg.seed, cfg.arith_train_size, cfg.arith_eval_size)
    module, sep, attr = cfg.dataset.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"data.dataset {cfg.dataset!r}: expected 'jsonl', 'arith' or 'module:callable'")
    factory = getattr(importlib.import_module(module), attr)
    ds = factory(cfg)
    if not hasattr(ds, "train") or not hasattr(ds, "eval"):
        raise TypeError(f"data.dataset {cfg.dataset!r} returned {type(ds).__name__}, which lacks train()/eval()")
    return ds


class FeedOrder:
    """Position → problem, epoch by epoch, each epoch a seeded permutation."""

    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self._epoch = -1
        self._perm: list[int] = []

    def index(self, position: int) -> tuple[int, int]:
        """(epoch, problem index) of a feed position."""
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            perm = list(range(self.size))
            if self.shuffle:
                random.Random(self.seed + epoch).shuffle(perm)
            self._epoch, self._perm = epoch, perm
        return epoch, self._perm[offset]
