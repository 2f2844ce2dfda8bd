"""Shared plumbing for every torl service: config, logging, metrics, errors, gRPC bootstrap.

Imports here stay light (no torch, no vllm) so entry points can validate config fast.
"""
