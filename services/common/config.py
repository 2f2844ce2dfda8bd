"""Typed configuration shared by every service.

Each service defines a settings class derived from `ServiceSettings` with its own env prefix
(`TORL_EXECUTOR_`, `TORL_REWARD_`, ...). Values come from, highest precedence first:
command-line flags (`overrides`) > environment > config file (YAML) > defaults.

A config file may hold one service's keys at top level, or several services under their names
(`executor:`, `reward:`, ...), which is how `torl train --config F` shares one file.
Validation errors become `ConfigError` with one line per problem naming the field.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

SERVICE_NAMES = ("executor", "reward", "rollout", "learner")

_file_values: ContextVar[dict[str, Any] | None] = ContextVar("torl_config_file_values", default=None)


class ConfigError(ValueError):
    """Configuration is invalid; `str()` is a short, field-naming message fit for a terminal."""


class StrictModel(BaseModel):
    """Base for nested config sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class TlsClientSettings(StrictModel):
    """TLS of outgoing gRPC calls to one kind of peer (PEM files, e.g. a mounted kubernetes.io/tls Secret).

    Files are read when a channel is opened; the entry point checks them at start-up (torl.common.tls).
    """

    enabled: bool = Field(False, description="Call the peer over TLS (false: plaintext).")
    ca_file: str = Field(
        "", max_length=4096, description="PEM CA bundle that signs the peer's certificate; empty: system roots."
    )
    cert_file: str = Field(
        "", max_length=4096, description="PEM client certificate presented to the peer (mTLS); empty: none."
    )
    key_file: str = Field("", max_length=4096, description="PEM private key of cert_file (mTLS).")
    server_name_override: str = Field(
        "",
        max_length=253,
        description="Name checked against the peer's certificate instead of the target's host (IP targets, tests).",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsClientSettings:
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key_file" if self.cert_file else "cert_file"
            raise ValueError(f"{missing} is required when the other of cert_file/key_file is set (mTLS needs both)")
        return self


class TlsSettings(StrictModel):
    """TLS of a service's gRPC server. With ca_file set, clients must present a certificate it signs (mTLS)."""

    enabled: bool = Field(False, description="Serve gRPC over TLS (false: plaintext).")
    cert_file: str = Field("", max_length=4096, description="PEM server certificate (chain); required when enabled.")
    key_file: str = Field("", max_length=4096, description="PEM private key of cert_file; required when enabled.")
    ca_file: str = Field(
        "", max_length=4096, description="PEM CA bundle of client certificates: set = require and verify them (mTLS)."
    )
    reload: bool = Field(
        True,
        description="Re-read cert/key/CA when the files change (checked at each new connection); "
        "false: a restart picks up rotated certificates.",
    )

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TlsSettings:
        if self.enabled:
            missing = [name for name in ("cert_file", "key_file") if not getattr(self, name)]
            if missing:
                raise ValueError(f"{' and '.join(missing)} required when enabled=true")
        return self


class GrpcServerSettings(StrictModel):
    """How a service's gRPC server listens."""

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port (printed at start).")
    max_message_mb: int = Field(
        64, ge=1, le=2048, description="Largest gRPC message accepted or sent, in MiB."
    )
    shutdown_grace_seconds: float = Field(
        3.0, ge=0.0, le=600.0, description="On SIGTERM, how long in-flight calls may finish."
    )
    max_concurrent_rpcs: int = Field(
        1024, ge=1, le=1_000_000, description="Calls served at once; more get RESOURCE_EXHAUSTED."
    )
    tls: TlsSettings = Field(default_factory=lambda: TlsSettings(), description="TLS / mTLS of the gRPC server.")


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set `service_name` and `env_prefix`."""

    model_config = SettingsConfigDict(
        extra="forbid", validate_default=True, env_nested_delimiter="__", case_sensitive=False
    )
    service_name: ClassVar[str] = ""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum log level."
    )
    log_json: bool = Field(True, description="JSON log lines (false: human-readable console format).")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus /metrics endpoint.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics port; 0 disables the endpoint."
    )
    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(), description="gRPC server settings."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_values = _file_values.get() or {}
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_values))


S = TypeVar("S", bound=ServiceSettings)


def read_config_file(path: str | Path | None, service: str) -> dict[str, Any]:
    """The section of a YAML config file that belongs to `service` ({} when no file)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    if any(name in data for name in (*SERVICE_NAMES, "train", "up")):
        section = data.get(service) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"config file {p}: section '{service}' must be a mapping")
        return dict(section)
    return dict(data)


def _unknown_env_vars(cls: type[ServiceSettings]) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    if not prefix:
        return []
    known = {name.upper() for name in cls.model_fields}
    bad = []
    for key in os.environ:
        if key.upper().startswith(prefix):
            head = key.upper()[len(prefix):].split("__", 1)[0]
            if head not in known:
                bad.append(key)
    return sorted(bad)


def format_validation_error(err: ValidationError, service: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        given = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"config error: {service}.{loc}: {msg}{shown}")
    return "\n".join(lines)


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed."""
    parts = dotted.split(".")
    cur = target
    for part in parts[:-1]:
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config error: cannot set '{dotted}': '{part}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """Turn `--set a.b=1` flags into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"config error: --set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        set_dotted(out, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(
    cls: type[S],
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    file_values: dict[str, Any] | None = None,
) -> S:
    """Build validated settings: flags (`overrides`) > environment > config file > defaults.

    `file_values` lets a caller that already read a combined config pass the section directly.
    Raises ConfigError with one line per invalid field.
    """
    service = cls.service_name or cls.__name__
    bad_env = _unknown_env_vars(cls)
    if bad_env:
        raise ConfigError("\n".join(f"config error: unknown environment variable {k}" for k in bad_env))
    values = dict(file_values or {})
    if config_file is not None:
        values = _merge(read_config_file(config_file, service), values)
    token = _file_values.set(values)
    try:
        return cls(**(overrides or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, service)) from None
    finally:
        _file_values.reset(token)
