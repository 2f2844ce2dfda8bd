"""Write the reference-oracle vectors: tests/data/observation_vectors.json and tests/data/loop_vectors.json.

Every expected value comes from tests/reference_oracle.py, a line-by-line transliteration of the
ToRL reference (GAIR-NLP/ToRL verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py and
verl/workers/reward_manager/naive.py); each vector names the reference lines it exercises.
Run from the repository root: `python tests/data/make_reference_vectors.py` (tests check the files are current).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reference_oracle import Round, Run, observation_text, penalty_applies, tir_generate  # noqa: E402

SPMD = "vllm_rollout_spmd.py"
TB = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'

# (name, stdout, stderr, exit_code, reference lines)
OBSERVATION_INPUTS: list[tuple[str, str, str, int, str]] = [
    ("plain stdout", "2\n", "", 0, ":229-230, :312-313, :321"),
    ("stdout with surrounding whitespace", "  \n 42  \n\n", "", 0, ":321"),
    ("empty output, exit 0", "", "", 0, ":320"),
    ("timeout with no output (exit -9)", "", "", -9, ":231-232, :320"),
    ("timeout after partial output", "partial\n", "", -9, ":229 (stdout non-empty)"),
    ("traceback on stderr", "", TB + "ZeroDivisionError: division by zero\n", 1, ":231-232, :319"),
    ("stdout printed before a traceback", "x = 3\n", TB + "ZeroDivisionError: division by zero\n", 1,
     ":229 (stdout non-empty wins)"),
    ("stdout that mentions Error", "Error count: 3\nall good\n", "", 0, ":319"),
    ("NameError traceback", "", TB + "NameError: name 'x' is not defined\n", 1, ":319"),
    ("SyntaxError", "", '  File "<string>", line 1\n    print(\n         ^\nSyntaxError: \'(\' was never closed\n', 1,
     ":319"),
    ("stderr warning without Error, exit 1", "", "warning: something odd\nexit now\n", 1, ":232, :321"),
    ("stderr on success is ignored", "ok\n", "DeprecationWarning: x\n", 0, ":229-230"),
    ("exactly 255 chars", "a" * 255 + "\n", "", 0, ":322"),
    ("exactly 256 chars", "b" * 256 + "\n", "", 0, ":322-323"),
    ("long output", "\n".join(str(i) for i in range(200)) + "\n", "", 0, ":322-323"),
    ("unicode", "π ≈ 3.14159 — ✓ 数学\n", "", 0, ":321"),
    ("long unicode", "é" * 300 + "\n", "", 0, ":322-323"),
    ("replacement chars from non-UTF-8 bytes", "\ufffd\ufffdabc\n", "", 0, ":321"),
    ("whitespace-only stdout with exit 1 and stderr", "   \n", TB + "ZeroDivisionError: division by zero\n", 1,
     ":229 (stdout non-empty), :320 (empty after strip)"),
    ("long error last line", "", "ValueError: " + "v" * 300 + "\n", 1, ":319, :322-323"),
    ("memory error", "", TB + "MemoryError\n", 1, ":319"),
    ("print() gives a newline only: empty after strip", "\n", "", 0, ":320 (len(observation.strip())==0)"),
    ("whitespace-only stdout, exit 0", " \t \n\n", "", 0, ":320"),
    ("whitespace-only stderr, exit 1", "", "  \n", 1, ":232 (stderr.strip()), :320"),
    ("Error in stdout with trailing blank lines", "ValueError: bad\n\n  \n", "", 0, ":319 (strip, then last line)"),
    ("Error line followed by whitespace only", "Error\n   ", "", 0, ":319"),
]


def observation_vectors() -> dict[str, object]:
    return {
        "description": "Inputs (stdout, stderr, exit_code) and the observation text the ToRL reference computes "
        f"(GAIR-NLP/ToRL verl/workers/rollout/vllm_rollout/{SPMD}: postproc :227-234, postproc_observation "
        ":308-325), written by tests/data/make_reference_vectors.py from tests/reference_oracle.py. "
        "Owned by the executor (torl.executor.observation); rollout's tests read them too.",
        "vectors": [
            {"name": n, "stdout": o, "stderr": e, "exit_code": c, "observation": observation_text(o, e, c),
             "reference": f"{SPMD}{lines}"}
            for n, o, e, c, lines in OBSERVATION_INPUTS
        ],
    }


CODE = "```python\nprint(6*7)\n```\n"
OK = Run("42\n")
ERR = Run("", TB + "ZeroDivisionError: division by zero\n", 1)
PRINT_THEN_RAISE = Run("3\n", TB + "ValueError: late\n", 1)
EOS = "eos"
OUT = "output"

# (name, C, rounds [(text, ended)], runs, reference lines)
LOOP_INPUTS: list[tuple[str, int, list[tuple[str, str]], list[Run], str]] = [
    ("C1 closed block runs, ok", 1, [("Let me compute.\n" + CODE, OUT), ("The answer is \\boxed{42}.", EOS)], [OK],
     ":79-99, :292, :304, :312-314"),
    ("C1 no code, direct answer", 1, [("It is \\boxed{41}.", EOS)], [], ":291, :297/:348, naive.py:72"),
    ("C1 block without closing fence before the stop string does not run", 1,
     [("```python\nprint(6*7)\n", OUT), ("\\boxed{42}", EOS)], [], ":96-98 (incomplete), :279 (stop string left out)"),
    ("C1 fence glued to the stop string does not run", 1,
     [("```python\nprint(6*7)", OUT), ("\\boxed{42}", EOS)], [], ":96-98, :279"),
    ("C1 empty block does not run", 1, [("```python\n```\n", OUT), ("\\boxed{1}", EOS)], [], ":102-105, :304"),
    ("C1 block of one blank line runs a newline", 1, [("```python\n\n```\n", OUT), ("\\boxed{1}", EOS)],
     [Run("")], ":95, :304, :320"),
    ("C1 last of two closed blocks runs", 1,
     [("```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```\n", OUT), ("\\boxed{2}", EOS)], [Run("2\n")],
     ":86-88 (last_only)"),
    ("C1 a later open block cancels the closed one", 1,
     [("```python\nprint(1)\n```\n```python\nprint(2)\n", OUT), ("\\boxed{2}", EOS)], [], ":96-98"),
    ("C1 line ending with ```python opens a block", 1,
     [("Code: ```python\nprint(5)\n```\n", OUT), ("\\boxed{5}", EOS)], [Run("5\n")], ":86"),
    ("C1 a plain ``` fence after the block does not reopen it", 1,
     [("```python\nprint(7)\n```\n```\nnot code\n```\n", OUT), ("\\boxed{7}", EOS)], [Run("7\n")], ":92-93"),
    ("C1 program raises: not a successful execution", 1, [(CODE, OUT), ("\\boxed{0}", EOS)], [ERR],
     ":231-232, :315-316"),
    ("C1 program prints then raises: successful as the reference counts it", 1,
     [(CODE, OUT), ("\\boxed{3}", EOS)], [PRINT_THEN_RAISE], ":229 (stdout non-empty), :312-314"),
    ("C1 print() only: successful, observation is the Timed Out text", 1, [(CODE, OUT), ("\\boxed{0}", EOS)],
     [Run("\n")], ":229, :320"),
    ("C1 silent program exit 0: successful", 1, [(CODE, OUT), ("\\boxed{0}", EOS)], [Run("")], ":229 (return_code 0)"),
    ("C1 tool round cut by length runs nothing", 1, [("```python\nprint(6*7)\n```\n", "length")], [],
     ":293 (length is not an execution)"),
    ("C0 no tool round at all", 0, [(CODE + "\\boxed{42}", EOS)], [], ":271 (stop=None), :282-288, naive.py:72"),
    ("C2 round 2 stops on the stop string without new code: nothing re-runs", 2,
     [(CODE, OUT), ("So it is 42.\n", OUT), ("\\boxed{42}", EOS)], [OK], ":300 (this round's text only), :335"),
    ("C2 ok in round 1, EOS in round 2: the last tool round had no execution", 2,
     [(CODE, OUT), ("\\boxed{42}", EOS)], [OK], ":335, :350 (execution_pass reset every tool round)"),
    ("C2 error then fixed", 2, [(CODE, OUT), ("Fix it.\n" + CODE, OUT), ("\\boxed{42}", EOS)], [ERR, OK],
     ":312-316, :350"),
    ("C2 no code in round 1, code in round 2", 2, [("Think first.\n", OUT), (CODE, OUT), ("\\boxed{42}", EOS)],
     [OK], ":300-306"),
    ("C2 a block opened in round 1 and closed in round 2 does not run", 2,
     [("```python\nprint(6*7)\n", OUT), ("```\n", OUT), ("\\boxed{42}", EOS)], [], ":300 (this round's text only)"),
    ("C3 ok, error, ok", 3, [(CODE, OUT), (CODE, OUT), (CODE, OUT), ("\\boxed{42}", EOS)], [OK, ERR, OK],
     ":350"),
    ("C3 ok, ok, then a round without code", 3, [(CODE, OUT), (CODE, OUT), ("Done.\n", OUT), ("\\boxed{42}", EOS)],
     [OK, OK], ":335, :350"),
    ("C3 ok, then EOS in round 2", 3, [(CODE, OUT), ("\\boxed{42}", EOS)], [OK], ":348, :350"),
    ("C3 error, error, prints then raises", 3, [(CODE, OUT), (CODE, OUT), (CODE, OUT), ("\\boxed{3}", EOS)],
     [ERR, ERR, PRINT_THEN_RAISE], ":229, :350"),
    ("C3 every tool round ends on EOS at once", 3, [("\\boxed{42}", EOS)], [], ":348"),
]


def loop_vectors() -> dict[str, object]:
    vectors = []
    for name, c, rounds, runs, lines in LOOP_INPUTS:
        out = tir_generate([Round(t, e) for t, e in rounds], runs, c)
        vectors.append({
            "name": name,
            "max_tool_calls": c,
            "rounds": [{"text": t, "ended": e} for t, e in rounds[: out.rounds_generated]],
            "runs": [{"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code} for r in runs],
            "programs": [{"round": i, "code": p} for i, p in out.programs],
            "observations": out.observations,
            "execution_pass": out.execution_pass,
            "penalty": penalty_applies(out),
            "reference": f"{SPMD}{lines}",
        })
    return {
        "description": "Scripted generation rounds of one sample (vLLM's text of each round, stop string left "
        "out, and how the round ended), the sandbox's answers, and what the ToRL reference does: which program "
        f"runs in which round, the observation texts, execution_pass (GAIR-NLP/ToRL {SPMD} _tir_generate "
        ":259-350) and whether the execution penalty applies (verl/workers/reward_manager/naive.py:72). "
        "Written by tests/data/make_reference_vectors.py from tests/reference_oracle.py.",
        "vectors": vectors,
    }


def render(data: dict[str, object]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    (HERE / "observation_vectors.json").write_text(render(observation_vectors()), encoding="utf-8")
    (HERE / "loop_vectors.json").write_text(render(loop_vectors()), encoding="utf-8")


if __name__ == "__main__":
    main()
