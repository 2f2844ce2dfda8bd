"""The in-process grading library: `Grader.score(...)` / `score_batch(...)`.

Evaluation grades in-process with it; the gRPC adapter (server.py) and `torl grade` use the very
same code. Per item: screen the response size, extract the answer (training: last boxed only),
screen the answer and the reference, try the cheap judges in this process, and send the rest to
the verifier pool (worker processes, hard per-item timeout). Then apply the ToRL reward rules.

Every item gets a result with a reason code; no input makes `score`/`score_batch` raise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum

from torl.reward import metrics
from torl.reward.config import GraderSettings, PenaltySettings
from torl.reward.equivalence import Outcome, Verdict, quick_judge
from torl.reward.extract import Source, extract_answer
from torl.reward.pool import VerifyPool, VerifyTask
from torl.reward.rules import Reason, ToolStatus, reward_for
from torl.reward.screen import screen_answer, screen_text

_NO_PENALTY = PenaltySettings(enabled=False)


class Mode(StrEnum):
    TRAINING = "training"  # last \boxed{} only, as ToRL
    EVAL = "eval"  # also the configured fallbacks


@dataclass(frozen=True)
class ScoreItem:
    """One response to score. `response` is the full text (observations included) or, in eval
    mode, a bare answer."""

    response: str
    reference: str
    mode: Mode = Mode.TRAINING
    tool_statuses: tuple[ToolStatus, ...] = ()
    tool_rounds: int = 0
    id: str = ""
    tool_passed: tuple[bool, ...] = ()  # per tool round: ran and succeeded as the reference counts it


@dataclass(frozen=True)
class ScoreResult:
    id: str
    reward: float
    correct: bool
    reason: Reason
    extracted_answer: str
    penalty_applied: bool
    seconds: float
    detail: str = field(default="", compare=False)  # which judge decided, or why input was refused


@dataclass
class _Pending:
    """An item after the in-process stage: either decided, or waiting on the verifier pool."""

    item: ScoreItem
    started: float
    answer: str = ""
    verdict: Verdict | None = None
    reason: Reason | None = None  # set when decided without a verdict (no answer, refused input)
    detail: str = ""
    future: Future[Verdict] | None = None
    finished: float = 0.0

    def mark_finished(self, _future: object = None) -> None:
        self.finished = time.perf_counter()


class Grader:
    """Scores responses against references. Owns a verifier pool: use it as a context manager
    or call `close()`."""

    def __init__(self, settings: GraderSettings | None = None) -> None:
        self.settings = settings or GraderSettings()
        self._pool = VerifyPool(
            self.settings.workers, self.settings.item_timeout_seconds, self.settings.worker_memory_mb
        )

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    @property
    def worker_restarts(self) -> int:
        return self._pool.restarts

    # ------------------------------------------------------------- stages

    def _prepare(self, item: ScoreItem) -> _Pending:
        p = _Pending(item=item, started=time.perf_counter())
        self._screen_and_extract(p)
        if p.future is None:
            p.mark_finished()
        return p

    def _screen_and_extract(self, p: _Pending) -> None:
        item = p.item
        limits = self.settings.screen
        problem = screen_text(item.response, limits)
        if problem is not None:
            metrics.SCREEN_REJECTIONS.labels(what="response").inc()
            p.reason, p.detail = Reason.UNPARSABLE, problem
            return
        extraction = extract_answer(item.response, item.mode is Mode.EVAL, self.settings.fallbacks)
        if extraction.source is Source.MALFORMED:
            p.reason, p.detail = Reason.UNPARSABLE, "the last \\boxed{ is never closed"
            return
        if extraction.answer is None:
            p.reason, p.detail = Reason.NO_ANSWER, "no boxed answer" if item.mode is Mode.TRAINING else "no answer"
            return
        p.answer = extraction.answer
        problem = screen_answer(p.answer, limits, "answer")
        if problem is not None:
            metrics.SCREEN_REJECTIONS.labels(what="answer").inc()
            p.reason, p.detail = Reason.UNPARSABLE, problem
            return
        reference = item.reference.strip()
        problem = "reference is empty" if not reference else screen_answer(reference, limits, "reference")
        if problem is not None:
            metrics.SCREEN_REJECTIONS.labels(what="reference").inc()
            p.reason, p.detail = Reason.UNPARSABLE, problem
            return
        p.verdict = quick_judge(p.answer, reference, self.settings.rel_tol)
        if p.verdict is None:
            p.future = self._pool.submit(VerifyTask(p.answer, reference, self.settings.rel_tol))
            p.future.add_done_callback(p.mark_finished)

    def _finish(self, p: _Pending) -> ScoreResult:
        if p.future is not None:
            try:
                p.verdict = p.future.result()
            except RuntimeError as e:  # pool closed under us
                p.verdict = Verdict(Outcome.UNPARSABLE, str(e))
        if p.reason is None:
            assert p.verdict is not None
            p.reason = {
                Outcome.EQUAL: Reason.CORRECT,
                Outcome.NOT_EQUAL: Reason.WRONG,
                Outcome.UNPARSABLE: Reason.UNPARSABLE,
                Outcome.TIMEOUT: Reason.TIMEOUT,
            }[p.verdict.outcome]
            p.detail = p.verdict.method
        correct = p.reason is Reason.CORRECT
        # The execution penalty shapes the training signal only; eval rewards stay +1/-1.
        penalty = self.settings.penalty if p.item.mode is Mode.TRAINING else _NO_PENALTY
        reward, penalized = reward_for(correct, p.item.tool_statuses, p.item.tool_rounds, penalty,
                                       p.item.tool_passed)
        seconds = (p.finished or time.perf_counter()) - p.started
        metrics.SCORES.labels(reason=p.reason.value, mode=p.item.mode.value).inc()
        metrics.VERIFICATION_SECONDS.observe(seconds)
        if penalized:
            metrics.PENALTIES.inc()
        return ScoreResult(
            id=p.item.id,
            reward=reward,
            correct=correct,
            reason=p.reason,
            extracted_answer=p.answer,
            penalty_applied=penalized,
            seconds=seconds,
            detail=p.detail,
        )

    # ------------------------------------------------------------- public API

    def score(
        self,
        response: str,
        reference: str,
        *,
        mode: Mode = Mode.TRAINING,
        tool_statuses: Sequence[ToolStatus] = (),
        tool_rounds: int = 0,
        id: str = "",
        tool_passed: Sequence[bool] = (),
    ) -> ScoreResult:
        item = ScoreItem(response, reference, mode, tuple(tool_statuses), tool_rounds, id, tuple(tool_passed))
        return self.score_batch([item])[0]

    def score_batch(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """Results in the order of `items`; items run in parallel over the worker pool."""
        pending = [self._prepare(item) for item in items]
        return [self._finish(p) for p in pending]

    async def score_batch_async(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """`score_batch` for asyncio callers: the event loop is never blocked."""
        pending = await asyncio.to_thread(lambda: [self._prepare(item) for item in items])
        waits = [asyncio.wrap_future(p.future) for p in pending if p.future is not None]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        return [self._finish(p) for p in pending]
