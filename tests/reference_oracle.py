"""The ToRL reference's own rules, transliterated for use as a test oracle.

Source: GAIR-NLP/ToRL, verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py (cited as ":line")
and verl/workers/reward_manager/naive.py. Each function below follows the cited lines statement by
statement (names kept), with the batch bookkeeping reduced to one sample. Nothing here imports torl:
the vectors in tests/data/observation_vectors.json and tests/data/loop_vectors.json are written
from these functions by tests/data/make_reference_vectors.py, and torl's tests compare against them.

One batch effect is not modelled: the reference ends the round loop when *no* sample of the whole
batch stopped on "```output" (:297), dropping that round's text and keeping the previous
execution_pass. With a batch of many samples some sample almost always calls the tool, so the
oracle follows the per-sample rule (as if another sample in the batch executed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

OBS_START = "```output"  # :77
OBS_END = "\n```\n"  # :78
TIMED_OUT = "timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'"  # :320


def extract_program(result: str, last_only: bool = True) -> str:
    """:79-99 verbatim."""
    program = ""
    start = False
    for line in result.split("\n"):
        if line.startswith("```python") or line.endswith("```python"):
            if last_only:
                program = ""  # only extract the last program
            else:
                program += "\n# ========\n"
            start = True
        elif line.startswith("```"):
            start = False
        elif start:
            program += line + "\n"
    if start:
        # the code is incomplete
        program = ""
    return program


def postproc(run_result: dict[str, object] | None) -> tuple[str, str]:
    """code_interpreter_batch_call's postproc (:227-234) on the sandbox's run_result.

    None stands for a failed request (:112-114 returns {"error": "unknown"}; :225 a timed-out future):
    both raise inside the try and give ("Error", "UnknownError")."""
    try:
        if run_result is None:
            raise KeyError("run_result")
        if str(run_result["return_code"]) == "0" or len(str(run_result["stdout"])) != 0:
            return str(run_result["stdout"]), "Done"
        return str(run_result["stdout"]), str(run_result["stderr"]).strip()
    except Exception:
        return "Error", "UnknownError"


def postproc_observation(observation_list: tuple[str, str]) -> tuple[str, int]:
    """:308-325 verbatim; returns the appended text and execution_pass."""
    execution_pass = 0
    try:
        if observation_list[-1] == "Done":
            observation = observation_list[0]
            execution_pass = 1
        else:
            observation = observation_list[-1]
    except Exception:
        observation = "Error"
    if "Error" in observation:
        observation = observation.strip().split("\n")[-1]
    if len(observation.strip()) == 0:
        observation = TIMED_OUT
    observation = observation.strip()
    if len(observation) >= 256:
        observation = observation[:128] + "..." + observation[-128:]
    observation = f"{OBS_START}\n{observation}{OBS_END}"
    return observation, execution_pass


def observation_text(stdout: str, stderr: str, exit_code: int) -> str:
    """The observation between "```output\\n" and "\\n```\\n" for one run."""
    text, _ = postproc_observation(postproc({"stdout": stdout, "stderr": stderr, "return_code": exit_code}))
    return text[len(OBS_START) + 1 : -len(OBS_END)]


@dataclass
class Round:
    """One scripted generation round: vLLM's text (stop string left out, as :279 sees it) and why it ended."""

    text: str
    ended: str  # "output" (the stop string), "eos" or "length"


@dataclass
class Run:
    """The sandbox's answer to one program (stdout, stderr, return_code)."""

    stdout: str
    stderr: str = ""
    exit_code: int = 0


@dataclass
class Outcome:
    programs: list[tuple[int, str]] = field(default_factory=list)  # (round index, program) that ran
    observations: list[str] = field(default_factory=list)  # observation text of each run
    execution_pass: int = 0
    rounds_generated: int = 0


def tir_generate(rounds: list[Round], runs: list[Run], num_llm_calls_available: int) -> Outcome:
    """_tir_generate (:259-350) for one sample whose generations are `rounds`; `runs` answer its programs in order."""
    out = Outcome()
    runs_left = list(runs)
    calls = num_llm_calls_available
    index = 0
    while calls >= 0:  # :270
        tool_round = calls != 0  # :271 (stop=None in the last round)
        calls -= 1  # :272
        r = rounds[index]
        index += 1
        out.rounds_generated += 1
        if calls == -1:  # :282-288: last round, appended, loop ends
            break
        is_execution = tool_round and r.ended == "output"  # :290-295
        program = extract_program(r.text)  # :300, :102
        execution_pass = 0  # :335
        if program != "" and is_execution:  # :304
            out.programs.append((index - 1, program))
            run = runs_left.pop(0)
            text, execution_pass = postproc_observation(postproc(
                {"stdout": run.stdout, "stderr": run.stderr, "return_code": run.exit_code}))  # :330, :337
            out.observations.append(text[len(OBS_START) + 1 : -len(OBS_END)])
        out.execution_pass = execution_pass  # :350
        if not is_execution:  # :348: the sample stops
            break
    return out


def penalty_applies(outcome: Outcome) -> bool:
    """verl/workers/reward_manager/naive.py:72: score -= 0.5 when execution_passes == 0."""
    return outcome.execution_pass == 0
