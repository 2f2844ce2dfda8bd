"""Problem sets: the shipped eval/training JSONL files (data/) with checksum verification, and
user files (JSONL or Parquet) with the same {id, problem, answer} shape.

The shipped files are listed in `<data_dir>/SHA256SUMS`; a file whose digest differs fails loudly
(`DatasetError`), so a silently edited benchmark cannot produce a number.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# Benchmark name -> file under data_dir (ToRL's evaluation suite plus GSM8K).
BENCHMARKS: dict[str, str] = {
    "aime24": "eval/aime24.jsonl",
    "aime25": "eval/aime25.jsonl",
    "math500": "eval/math500.jsonl",
    "amc23": "eval/amc23.jsonl",
    "olympiadbench": "eval/olympiadbench.jsonl",
    "minerva_math": "eval/minerva_math.jsonl",
    "gsm8k": "eval/gsm8k.jsonl",
    "torl_test": "eval/torl_test.jsonl",
    "math_train": "train/math_train.jsonl",
    "aime_1983_2023": "train/aime_1983_2023.jsonl",
}


class DatasetError(ValueError):
    """A dataset is missing, malformed, or does not match its recorded checksum."""


@dataclass(frozen=True)
class Problem:
    """One problem with its reference answer: the one type for training (learner) and evaluation."""

    id: str
    problem: str
    answer: str
    dataset: str  # the row's "source" field, else the name it was loaded under, else the file's stem


def default_data_dir() -> Path:
    """`TORL_DATA_DIR`, else the repository's data/ next to services/."""
    env = os.environ.get("TORL_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "data"


def _recorded_digests(data_dir: Path) -> dict[str, str]:
    sums = data_dir / "SHA256SUMS"
    if not sums.is_file():
        raise DatasetError(f"{sums}: checksum list not found (data_dir={data_dir})")
    out: dict[str, str] = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.strip().partition("  ")
            out[name.strip()] = digest
    return out


def verify_file(data_dir: Path, rel: str) -> Path:
    """Check `rel` against SHA256SUMS; return its path."""
    path = data_dir / rel
    expected = _recorded_digests(data_dir).get(rel)
    if expected is None:
        raise DatasetError(f"{rel}: not listed in {data_dir / 'SHA256SUMS'}")
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise DatasetError(f"{path}: sha256 {actual[:16]}… does not match SHA256SUMS ({expected[:16]}…)")
    return path


def read_problems(path: Path, source: str = "") -> list[Problem]:
    """Problems from a JSONL or Parquet file of {id, problem, answer} (source optional); the one reader.

    A row without an id gets `<file stem>-<i>`, i its 0-based position among the file's rows (blank
    lines are not rows), the same in training and evaluation. `answer` may be a JSON number (kept as
    its text). A bad row is a `DatasetError` naming the file and row; a file with no rows is one too."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional dependency, only for Parquet inputs

        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    problems = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{n}: expected an object")
        answer = row.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        fields = (("problem", row.get("problem")), ("answer", answer))
        missing = [k for k, v in fields if not isinstance(v, str) or not v]
        if missing:
            raise DatasetError(f"{path}:{n}: missing or non-string field(s) {', '.join(missing)}")
        problems.append(
            Problem(
                id=str(row.get("id") or f"{path.stem}-{n - 1}"),
                problem=row["problem"],
                answer=str(answer),
                dataset=str(row.get("source") or source or path.stem),
            )
        )
    if not problems:
        raise DatasetError(f"{path}: holds no problems")
    return problems


def load_benchmark(name_or_path: str, data_dir: Path | None = None) -> list[Problem]:
    """A named benchmark (checksum-verified) or a user JSONL/Parquet file path."""
    if name_or_path in BENCHMARKS:
        root = data_dir or default_data_dir()
        return read_problems(verify_file(root, BENCHMARKS[name_or_path]), source=name_or_path)
    path = Path(name_or_path)
    if path.suffix in (".jsonl", ".parquet") and path.is_file():
        return read_problems(path)
    names = ", ".join(BENCHMARKS)
    raise DatasetError(f"unknown dataset {name_or_path!r}: use one of {names} or a .jsonl/.parquet path")
