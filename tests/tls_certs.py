"""Throwaway PKI for TLS tests: a CA, a server certificate for loopback and a client certificate,
written as PEM files the way a kubernetes.io/tls Secret mounts them (tls.crt, tls.key, ca.crt)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost", "torl-reward.test")


@dataclass(frozen=True)
class Pki:
    ca: Path  # ca.crt
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str, usage: x509.ObjectIdentifier, san: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, ca_cn: str = "torl test CA") -> Pki:
    """A fresh CA, a server certificate (SAN 127.0.0.1, localhost, torl-reward.test) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_cn))
        .issuer_name(_name(ca_cn))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "tls.crt",
        server_key=directory / "tls.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server, server_key = _issue(ca_key, ca_cert.subject, "torl-reward", ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    client, client_key = _issue(ca_key, ca_cert.subject, "torl-rollout", ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(client_key, pki.client_key)
    return pki


def client_creds(pki: Pki, with_cert: bool = False, ca: Path | None = None) -> grpc.ChannelCredentials:
    """Client credentials trusting `pki`'s CA (or `ca`), with the client certificate for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        private_key=pki.client_key.read_bytes() if with_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if with_cert else None,
    )


def tls_args(pki: Pki, mutual: bool = False) -> list[str]:
    """`torl <service> serve` flags that serve TLS with `pki`'s server certificate (mTLS: also its CA)."""
    args = ["--set", "grpc.tls.enabled=true",
            "--set", f"grpc.tls.cert_file={pki.server_cert}", "--set", f"grpc.tls.key_file={pki.server_key}"]
    if mutual:
        args += ["--set", f"grpc.tls.ca_file={pki.ca}"]
    return args
