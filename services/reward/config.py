"""Configuration of the reward service (env prefix TORL_REWARD_). Imports only pydantic."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings


class RewardSettings(ServiceSettings):
    """Settings of `torl reward serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_REWARD_")
    service_name: ClassVar[str] = "reward"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50052), description="gRPC server settings."
    )
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
