"""Configuration of the learner service (env prefix TORL_LEARNER_). Imports only pydantic."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings


class LearnerSettings(ServiceSettings):
    """Settings of `torl learner serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_LEARNER_")
    service_name: ClassVar[str] = "learner"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50054), description="gRPC server settings."
    )
    metrics_port: int = Field(9104, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
