"""`python -m torl.common.healthcheck`: ask a torl gRPC server's grpc.health.v1 whether it is SERVING.

Kubernetes' native gRPC probe speaks plaintext only, so with TLS between services (Helm `tls.enabled`)
the chart's probes exec this instead. It is also the images' HEALTHCHECK shape. Exit status 0 when
SERVING, 1 otherwise (the reason on stderr). Imports only grpc, so a probe costs well under a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torl.common.healthcheck", description=__doc__)
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the gRPC server.")
    p.add_argument("--service", default="", help="Health service name ('' = the whole server).")
    p.add_argument("--timeout", type=float, default=4.0, help="Deadline of the check, in seconds.")
    p.add_argument("--tls", action="store_true", help="Connect over TLS.")
    p.add_argument("--ca", default="", help="PEM CA bundle that signs the server certificate (TLS).")
    p.add_argument("--cert", default="", help="PEM client certificate (mTLS).")
    p.add_argument("--key", default="", help="PEM private key of --cert (mTLS).")
    p.add_argument("--server-name", default="", help="Name checked against the server certificate.")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> str:
    """'' when SERVING, else why not."""
    options: list[tuple[str, str]] = []
    if args.tls:
        if bool(args.cert) != bool(args.key):
            return "--cert and --key go together"
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(args.ca).read_bytes() if args.ca else None,
                private_key=Path(args.key).read_bytes() if args.key else None,
                certificate_chain=Path(args.cert).read_bytes() if args.cert else None,
            )
        except OSError as e:
            return f"cannot read a TLS file: {e}"
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
    return ""


def main(argv: list[str] | None = None) -> int:
    reason = check(parse_args(argv))
    if reason:
        print(f"not healthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
