"""TLS credentials for torl's gRPC servers and channels, built from PEM files.

The settings (torl.common.config.TlsSettings for a server, TlsClientSettings for outgoing calls)
name files, typically the keys of a mounted kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt).
Every file is checked when it is loaded: it must exist, be PEM, and a certificate must match its
key (the stdlib `ssl` module parses them), so a bad Secret fails start-up with a ConfigError that
names the field, never the first call. `check_settings_files` runs these checks over a whole
service config; the CLI calls it before any heavy import.

A server's certificates are re-read when the files change (`TlsSettings.reload`): gRPC asks the
fetcher below at each new TLS handshake, which costs one stat() per file. Existing connections keep
their session; clients open new connections with the rotated certificate. Client credentials are
read when a channel is opened, so a process picks up a rotated client certificate when it restarts
or opens a channel to a new peer.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc
from pydantic import BaseModel

from torl.common.config import ConfigError, TlsClientSettings, TlsSettings
from torl.common.logging import get_logger

log = get_logger("torl.tls")

_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKERS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----",
                b"-----BEGIN EC PRIVATE KEY-----")


def _read(path: str, field: str, kind: str) -> bytes:
    """The bytes of a PEM file, or a ConfigError naming `field` when it is missing or not PEM of `kind`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config error: {field}: file {path} not found") from None
    except OSError as e:
        raise ConfigError(f"config error: {field}: cannot read {path} ({e.strerror or e})") from None
    markers = (_CERT_MARKER,) if kind == "certificate" else _KEY_MARKERS
    if not any(m in data for m in markers):
        raise ConfigError(f"config error: {field}: {path} is not a PEM {kind}")
    return data


def _check_pair(cert_file: str, key_file: str, where: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(e) else str(e)
        raise ConfigError(f"config error: {where}.cert_file/key_file: {reason} ({cert_file}, {key_file})") from None


def _check_ca(ca_file: str, where: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as e:
        raise ConfigError(f"config error: {where}.ca_file: {ca_file} holds no valid CA certificate ({e})") from None


def _server_config(tls: TlsSettings, where: str) -> tuple[bytes, bytes, bytes | None]:
    cert = _read(tls.cert_file, f"{where}.cert_file", "certificate")
    key = _read(tls.key_file, f"{where}.key_file", "private key")
    _check_pair(tls.cert_file, tls.key_file, where)
    ca = None
    if tls.ca_file:
        ca = _read(tls.ca_file, f"{where}.ca_file", "certificate")
        _check_ca(tls.ca_file, where)
    return cert, key, ca


def _file_stamp(paths: list[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)  # follows symlinks: a Secret volume swaps its ..data link on update
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class _ReloadingCertificates:
    """gRPC's certificate-config fetcher: a new configuration when the files changed, else None.

    A half-written or mismatched set is logged and skipped (the old certificates stay in use) until
    the files change again."""

    def __init__(self, tls: TlsSettings, where: str) -> None:
        self.tls = tls
        self.where = where
        self.paths = [p for p in (tls.cert_file, tls.key_file, tls.ca_file) if p]
        self._stamp = _file_stamp(self.paths)
        self.reloads = 0

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = _file_stamp(self.paths)
        except OSError:
            return None  # mid-swap; the next handshake looks again
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            cert, key, ca = _server_config(self.tls, self.where)
        except ConfigError as e:
            log.warning("tls_reload_failed", error=str(e))
            return None
        self.reloads += 1
        log.info("tls_reloaded", cert_file=self.tls.cert_file)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def server_credentials(tls: TlsSettings, where: str = "grpc.tls") -> grpc.ServerCredentials | None:
    """Credentials for `add_secure_port`, or None when TLS is off. Raises ConfigError on a bad file."""
    if not tls.enabled:
        return None
    cert, key, ca = _server_config(tls, where)
    mutual = ca is not None
    if not tls.reload:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=mutual)
    initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
    return grpc.dynamic_ssl_server_credentials(
        initial, _ReloadingCertificates(tls, where), require_client_authentication=mutual
    )


def channel_credentials(tls: TlsClientSettings, where: str = "tls") -> grpc.ChannelCredentials | None:
    """Credentials for a secure channel, or None when TLS is off. Raises ConfigError on a bad file."""
    if not tls.enabled:
        return None
    ca = None
    if tls.ca_file:
        ca = _read(tls.ca_file, f"{where}.ca_file", "certificate")
        _check_ca(tls.ca_file, where)
    cert = key = None
    if tls.cert_file:
        cert = _read(tls.cert_file, f"{where}.cert_file", "certificate")
        key = _read(tls.key_file, f"{where}.key_file", "private key")
        _check_pair(tls.cert_file, tls.key_file, where)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def check_settings_files(settings: BaseModel, prefix: str = "") -> None:
    """Load every enabled TLS section in `settings` (nested at any depth), so that a missing or bad
    file fails start-up with a ConfigError naming the field, before the service does slow work."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        where = f"{prefix}{name}"
        if isinstance(value, TlsSettings):
            server_credentials(value, where)
        elif isinstance(value, TlsClientSettings):
            channel_credentials(value, where)
        elif isinstance(value, BaseModel):
            check_settings_files(value, f"{where}.")
