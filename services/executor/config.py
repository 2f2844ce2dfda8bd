"""Configuration of the executor service (env prefix TORL_EXECUTOR_). Imports only pydantic."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings


class ExecutorSettings(ServiceSettings):
    """Settings of `torl executor serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_EXECUTOR_")
    service_name: ClassVar[str] = "executor"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50051), description="gRPC server settings."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Separate /metrics port; 0 = only on the REST server's /metrics."
    )
