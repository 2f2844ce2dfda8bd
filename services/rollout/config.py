"""Configuration of the rollout service (env prefix TORL_ROLLOUT_). Imports only pydantic."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings


class RolloutSettings(ServiceSettings):
    """Settings of `torl rollout serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_ROLLOUT_")
    service_name: ClassVar[str] = "rollout"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50053), description="gRPC server settings."
    )
    metrics_port: int = Field(9103, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
