"""Shipped datasets load checksum-verified; a changed file or a malformed user file fails loudly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torl.common.datasets import BENCHMARKS, DatasetError, default_data_dir, load_benchmark


@pytest.mark.parametrize("name", ["aime24", "aime25", "math500", "amc23", "olympiadbench", "minerva_math", "gsm8k"])
def test_every_eval_set_loads(name: str) -> None:
    problems = load_benchmark(name)
    assert problems
    assert all(p.problem and p.answer and p.dataset == name for p in problems)
    assert len({p.id for p in problems}) == len(problems)


def test_sizes_match_the_manifest() -> None:
    assert len(load_benchmark("aime24")) == 30
    assert len(load_benchmark("math500")) == 500


def test_changed_file_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(default_data_dir(), data)
    target = data / BENCHMARKS["aime24"]
    target.chmod(0o644)
    target.write_text(target.read_text().replace("204", "205", 1))
    with pytest.raises(DatasetError, match="does not match SHA256SUMS"):
        load_benchmark("aime24", data_dir=data)


def test_user_files(tmp_path: Path) -> None:
    good = tmp_path / "mine.jsonl"
    good.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"id": "b", "problem": "2+2?", "answer": "4"}\n')
    probs = load_benchmark(str(good))
    assert [(p.id, p.answer, p.dataset) for p in probs] == [("mine-0", "2", "mine"), ("b", "4", "mine")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: missing or non-string field\(s\) answer"):
        load_benchmark(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"broken\.jsonl:1: not valid JSON"):
        load_benchmark(str(broken))
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_benchmark("nope")


def test_one_reader_numbers_id_less_rows_alike_for_training_and_eval(tmp_path: Path) -> None:
    """The learner's JSONL dataset and `torl eval` read a file through the one reader: same ids, same Problem."""
    from torl.learner.datasets import JsonlDataset, Problem

    f = tmp_path / "mix.jsonl"
    f.write_text('\n{"problem": "1+1?", "answer": 2}\n\n{"id": "b", "problem": "2+2?", "answer": "4"}\n'
                 '{"problem": "3+3?", "answer": "6"}\n')
    evaluated = load_benchmark(str(f))
    trained = list(JsonlDataset(str(f), str(f)).train())
    assert [p.id for p in evaluated] == [p.id for p in trained] == ["mix-0", "b", "mix-2"]
    assert Problem is type(evaluated[0]) and evaluated[0].answer == "2"  # a JSON number is kept as its text
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="holds no problems"):
        JsonlDataset(str(empty), "")
    with pytest.raises(DatasetError, match="file not found"):
        JsonlDataset(str(tmp_path / "missing.jsonl"), "")
