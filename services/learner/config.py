"""Configuration of the learner service (env prefix TORL_LEARNER_). Imports only pydantic.

One settings object covers the whole trainer: the GRPO loss, the DeepSpeed engine, the Redis
buffer, the orchestrator loop, checkpoints, weight sync and the data feed. `torl train --config F`
reads the `learner:` section of F; every field can be overridden with `--set a.b=v` or
`TORL_LEARNER_A__B=v`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings, StrictModel, TlsClientSettings


class GrpoSettings(StrictModel):
    """The GRPO objective (ToRL defaults: clip 0.2, no KL, no entropy, token mean)."""

    clip_low: float = Field(0.2, ge=0.0, le=1.0, description="PPO ratio clip below 1 (1 - clip_low).")
    clip_high: float = Field(0.2, ge=0.0, le=10.0, description="PPO ratio clip above 1 (1 + clip_high).")
    tis_cap: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description="Truncated importance sampling cap on exp(trainer - rollout logprob); 0 turns TIS off.",
    )
    old_logprob_source: Literal["trainer", "rollout"] = Field(
        "trainer",
        description="Denominator of the PPO ratio: 'trainer' (the trainer's own logprob before the step; TIS "
        "corrects for the rollout mismatch) or 'rollout' (the sampling logprob; no separate TIS).",
    )
    normalize_std: bool = Field(True, description="Divide group advantages by the group's reward std.")
    std_eps: float = Field(1e-6, gt=0.0, le=1.0, description="Added to the std before dividing.")
    kl_coef: float = Field(0.0, ge=0.0, le=0.0, description="KL penalty (ToRL: none; only 0 is supported).")
    entropy_coef: float = Field(0.0, ge=0.0, le=0.0, description="Entropy bonus (ToRL: none; only 0 is supported).")


class EngineSettings(StrictModel):
    """The DeepSpeed engine (one adapter: torl.learner.engine)."""

    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision.")
    lr: float = Field(1e-6, gt=0.0, le=1.0, description="AdamW learning rate (ToRL: 1e-6).")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: float = Field(1.0, ge=0.0, le=1e6, description="Gradient norm clip (0 = off).")
    micro_batch_size: int = Field(
        8, ge=1, le=4096, description="Sequences per forward/backward; a step accumulates over all of them."
    )
    dist_backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl with CUDA, else gloo.")
    master_port: int = Field(0, ge=0, le=65535, description="Rendezvous port for a single process (0 = free).")
    torch_threads: int = Field(0, ge=0, le=512, description="torch intra-op threads (0 = leave torch's default).")
    torch_extensions_dir: str = Field(
        ".cache/torch_extensions", description="Cache for DeepSpeed's JIT-built ops (TORCH_EXTENSIONS_DIR)."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    offload_optimizer: bool = Field(
        False, description="ZeRO-Offload: keep the optimizer state (fp32 master, Adam moments) in CPU memory "
        "(needs zero_stage >= 1)."
    )
    cuda_memory_fraction: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Cap this rank's PyTorch CUDA allocator at this share of its GPU (0 = no cap); for a GPU "
        "shared with rollout (torl train's placement mode shared).",
    )
    dist_timeout_seconds: float = Field(
        600.0, ge=10.0, le=86_400.0,
        description="Process-group timeout: a collective that does not complete in this time fails the job "
        "(a rank that dies is noticed by torchrun at once; this bounds a hang).",
    )


    @model_validator(mode="after")
    def _check_offload(self) -> EngineSettings:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self


class DataSettings(StrictModel):
    """The prompt feed: which problems, in which order, how many per step."""

    dataset: str = Field(
        "jsonl",
        description="'jsonl' (train_path/eval_path files of {id, problem, answer}), 'arith' (the synthetic "
        "A*B+C task) or 'module:callable' returning a torl.learner.datasets.Dataset.",
    )
    train_path: str = Field("", description="Training problems (JSONL) for the jsonl dataset.")
    eval_path: str = Field("", description="Held-out problems (JSONL) for the jsonl dataset.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Shuffle seed; the order of epoch e uses seed + e.")
    shuffle: bool = Field(True, description="Shuffle the problems each epoch.")
    prompts_per_step: int = Field(128, ge=1, le=100_000, description="Prompts (groups) per optimizer step.")
    group_size: int = Field(16, ge=1, le=1024, description="Samples per prompt.")
    arith_train_size: int = Field(20_000, ge=1, le=10_000_000, description="Problems the arith dataset makes.")
    arith_eval_size: int = Field(64, ge=1, le=100_000, description="Held-out problems of the arith dataset.")
    max_eval_prompts: int = Field(64, ge=0, le=100_000, description="Held-out prompts per evaluation.")


class LoopSettings(StrictModel):
    """The orchestrator: steps, staleness, deadlines, evaluation."""

    total_steps: int = Field(100, ge=1, le=10_000_000, description="Optimizer steps to run.")
    max_staleness: int = Field(
        0, ge=0, le=1000, description="0 = ToRL's synchronous loop; k>0 = async, groups at most k versions old."
    )
    reissue_after_seconds: float = Field(
        300.0, gt=0.0, le=86_400.0, description="Re-issue a prompt whose group has not arrived by then."
    )
    read_block_ms: int = Field(500, ge=1, le=60_000, description="How long one XREADGROUP blocks.")
    step_timeout_seconds: float = Field(
        3600.0, gt=0.0, le=604_800.0, description="Fail the run if one step gets no data for this long."
    )
    eval_every: int = Field(0, ge=0, le=1_000_000, description="Held-out evaluation every N steps (0 = off).")
    eval_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature for evaluation.")
    eval_concurrency: int = Field(
        32, ge=1, le=4096, description="Held-out problems generated at once (one Generate call each)."
    )
    samples_per_step: int = Field(2, ge=0, le=1000, description="Sample trajectories written to samples.jsonl.")
    exit_when_done: bool = Field(True, description="Stop the learner process after the last step.")


class CheckpointSettings(StrictModel):
    """DeepSpeed checkpoints and HF exports."""

    every_steps: int = Field(10, ge=1, le=1_000_000, description="DeepSpeed checkpoint every N steps.")
    hf_export_every: int = Field(0, ge=0, le=1_000_000, description="HF-format export every N steps (0 = at end).")
    keep_last: int = Field(2, ge=1, le=1000, description="Checkpoints kept on disk.")
    resume: bool = Field(True, description="Resume from the last checkpoint in output_dir when there is one.")


class WeightSyncSettings(StrictModel):
    """Where rollout replicas are and how weights reach them."""

    replicas: list[str] = Field(default_factory=list, description="Static rollout gRPC targets (host:port).")
    kubernetes_service: str = Field(
        "", description="Rollout Service name: discover replicas from its EndpointSlices (in-cluster)."
    )
    kubernetes_namespace: str = Field("", description="Namespace of that Service ('' = the pod's own).")
    kubernetes_port_name: str = Field("grpc", description="Port name in the EndpointSlice.")
    deadline_seconds: float = Field(60.0, gt=0.0, le=3600.0, description="Deadline of one push to one replica.")
    retries: int = Field(3, ge=0, le=100, description="Retries of a failed push per replica.")
    chunk_mb: float = Field(4.0, gt=0.0, le=1024.0, description="Bytes per WeightChunk, in MiB.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype of pushed tensors.")
    check_every_seconds: float = Field(
        5.0, ge=0.0, le=3600.0,
        description="While waiting for data, ask every replica's GetStatus this often and re-push the current "
        "weights to any replica serving older ones (restarted or added mid-run); 0 = never.",
    )
    status_deadline_seconds: float = Field(5.0, gt=0.0, le=600.0, description="Deadline of one GetStatus call.")
    tls: TlsClientSettings = Field(
        default_factory=lambda: TlsClientSettings(),
        description="TLS / mTLS of the calls to rollout replicas (discovered replicas are IPs: set "
        "server_name_override to a name in their certificate).",
    )
    transport: Literal["grpc", "nccl"] = Field(
        "grpc", description="How tensors travel: the gRPC stream (portable), or vLLM's NCCL weight transfer (GPUs; "
        "the rollout needs engine.weight_transfer=nccl). The manifest goes over gRPC either way.",
    )
    nccl_master_address: str = Field(
        "", description="NCCL: the address rollout workers reach this learner's rank-0 rendezvous on (the rollout's "
        "weights.nccl_master_address); the learner binds it.",
    )
    nccl_master_port: int = Field(0, ge=0, le=65535, description="NCCL: the rendezvous (TCPStore) port.")
    nccl_world_size: int = Field(
        0, ge=0, le=65536, description="NCCL: the largest group allowed (1 + replicas x workers per replica); 0 = no "
        "bound. The group is formed from the replicas that answer, so it may be smaller while one is down.",
    )
    nccl_workers_per_replica: int = Field(
        1, ge=1, le=64, description="NCCL: inference workers per rollout replica (its tensor_parallel_size)."
    )
    nccl_packed: bool = Field(True, description="NCCL: packed broadcast buffers (must match the rollout's).")

    @model_validator(mode="after")
    def _nccl_rendezvous_complete(self) -> WeightSyncSettings:
        if self.transport == "nccl" and (not self.nccl_master_address or self.nccl_master_port == 0):
            raise ValueError("weight_sync.transport=nccl needs weight_sync.nccl_master_address and nccl_master_port")
        return self


class BufferSettings(StrictModel):
    """The Redis streams (torl.common.redis_layout)."""

    prompts_maxlen: int = Field(100_000, ge=100, le=100_000_000, description="MAXLEN (~) of the prompts stream.")
    trajectories_maxlen: int = Field(
        100_000, ge=100, le=100_000_000, description="MAXLEN (~) of the trajectories stream (rollout trims it)."
    )
    dead_maxlen: int = Field(10_000, ge=10, le=10_000_000, description="MAXLEN (~) of the dead-letter stream.")
    consumer: str = Field("learner-0", description="Consumer name in the `learner` group (stable across restarts).")
    claim_min_idle_ms: int = Field(
        10_000, ge=0, le=86_400_000, description="Pending entries of other consumers idle this long are claimed."
    )


class TrackingSettings(StrictModel):
    """Optional experiment trackers (the JSONL log is always written)."""

    tensorboard: bool = Field(False, description="Also write TensorBoard event files under output_dir/tb.")
    wandb_project: str = Field("", description="Weights & Biases project ('' = off).")


class LearnerSettings(ServiceSettings):
    """Settings of `torl learner serve` and the trainer it runs."""

    model_config = SettingsConfigDict(env_prefix="TORL_LEARNER_")
    service_name: ClassVar[str] = "learner"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50054), description="gRPC server settings."
    )
    metrics_port: int = Field(9104, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")

    train: bool = Field(False, description="Run the trainer in this process (false: only GetStatus is served).")
    run_id: str = Field("demo", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Run id.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the run's streams.")
    model_dir: str = Field("", description="HF-format directory of the starting model (required to train).")
    output_dir: str = Field("runs/learner", description="Checkpoints, exports, metrics.jsonl, samples.")
    grpo: GrpoSettings = Field(default_factory=lambda: GrpoSettings(), description="GRPO loss.")
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings(), description="DeepSpeed engine.")
    data: DataSettings = Field(default_factory=lambda: DataSettings(), description="Prompt feed.")
    loop: LoopSettings = Field(default_factory=lambda: LoopSettings(), description="Orchestrator.")
    checkpoint: CheckpointSettings = Field(
        default_factory=lambda: CheckpointSettings(), description="Checkpoints and exports."
    )
    weight_sync: WeightSyncSettings = Field(
        default_factory=lambda: WeightSyncSettings(), description="Weight push to rollout replicas."
    )
    buffer: BufferSettings = Field(default_factory=lambda: BufferSettings(), description="Redis streams.")
    tracking: TrackingSettings = Field(default_factory=lambda: TrackingSettings(), description="Trackers.")

    @model_validator(mode="after")
    def _check_training_inputs(self) -> LearnerSettings:
        if self.train and not self.model_dir:
            raise ValueError("train=true needs model_dir (the starting model)")
        if self.train and self.data.dataset == "jsonl" and not self.data.train_path:
            raise ValueError("dataset 'jsonl' needs data.train_path")
        return self
