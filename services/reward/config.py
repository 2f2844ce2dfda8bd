"""Configuration of the reward service (env prefix TORL_REWARD_). Imports only pydantic.

`GraderSettings` is the part the in-process library (`torl.reward.grader.Grader`) needs, so
evaluation code can build a grader without the server's settings.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings, StrictModel


class ScreenSettings(StrictModel):
    """Limits that reject pathological input before any parser sees it (reason `unparsable`)."""

    max_response_chars: int = Field(
        262_144, ge=1_000, le=16_777_216, description="Longest response text scored; longer ones are unparsable."
    )
    max_answer_chars: int = Field(
        1_000, ge=16, le=100_000, description="Longest extracted answer (or reference) handed to the verifier."
    )
    max_brace_depth: int = Field(
        12, ge=2, le=200, description="Deepest nesting of {}, () and [] allowed in an answer or reference."
    )
    max_exponent: int = Field(
        10_000,
        ge=10,
        le=10_000_000,
        description="Largest numeric exponent (also of power towers and factorials) before an answer is rejected.",
    )
    max_digits: int = Field(
        400, ge=20, le=100_000, description="Longest run of digits in one number literal of an answer."
    )


class PenaltySettings(StrictModel):
    """ToRL's optional execution penalty (the paper saw no gain from it; off by default)."""

    enabled: bool = Field(False, description="Subtract `amount` when the last tool round had no successful run.")
    amount: float = Field(0.5, ge=0.0, le=10.0, description="How much is subtracted from the reward.")


class FallbackSettings(StrictModel):
    """Answer extraction fallbacks, used only in eval mode (training scores the last boxed answer only)."""

    answer_is: bool = Field(True, description="Eval: use the text after the last 'the answer is'.")
    bare_answer: bool = Field(
        True, description="Eval: a short one-line response with no boxed answer is itself the answer."
    )
    bare_answer_max_chars: int = Field(
        120, ge=1, le=10_000, description="Longest response that counts as a bare answer."
    )
    last_number: bool = Field(True, description="Eval: use the last number of the response.")


class GraderSettings(StrictModel):
    """How answers are extracted, compared and timed."""

    workers: int = Field(2, ge=1, le=256, description="Verifier worker processes (math-verify is not thread-safe).")
    item_timeout_seconds: float = Field(
        5.0, ge=0.1, le=300.0, description="Hard limit per item; a worker that overruns is killed and replaced."
    )
    rel_tol: float = Field(
        1e-6, ge=0.0, le=0.1, description="Relative tolerance when both answers are plain numbers."
    )
    worker_memory_mb: int = Field(
        4096, ge=256, le=1_048_576, description="Address-space limit of each worker process, in MiB."
    )
    screen: ScreenSettings = Field(default_factory=lambda: ScreenSettings(), description="Input screening limits.")
    penalty: PenaltySettings = Field(
        default_factory=lambda: PenaltySettings(), description="Optional execution penalty."
    )
    fallbacks: FallbackSettings = Field(
        default_factory=lambda: FallbackSettings(), description="Eval-mode extraction fallbacks."
    )


class RewardSettings(ServiceSettings):
    """Settings of `torl reward serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_REWARD_")
    service_name: ClassVar[str] = "reward"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50052), description="gRPC server settings."
    )
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    grader: GraderSettings = Field(
        default_factory=lambda: GraderSettings(), description="Extraction, verification and reward rules."
    )
    max_batch_items: int = Field(
        4096, ge=1, le=1_000_000, description="Most items in one ScoreBatch call; more get INVALID_ARGUMENT."
    )
