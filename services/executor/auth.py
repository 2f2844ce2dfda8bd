"""API keys for the executor gateway: loading, hot reload, per-key rate and concurrency limits.

Keys live in a YAML/JSON file (a mounted Kubernetes Secret works: it is re-read when its
modification time or size changes, checked at most once a second, without a restart):

    keys:
      - name: team-a            # shown in metrics and logs, never the key itself
        key: "s3cret-token"     # the bearer token
        rate_per_second: 20     # token bucket refill
        burst: 40               # token bucket size
        max_concurrent: 16      # runs in flight at once
        isolation: strict       # default isolation for this key
        allow_session: false    # may this key ask for session isolation?

A file that fails to parse keeps the previous keys (and logs why), so a bad edit does not lock
everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from torl.common.config import StrictModel
from torl.common.errors import ResourceExhausted, Unauthenticated
from torl.common.logging import get_logger
from torl.executor import metrics
from torl.executor.config import Isolation
from torl.executor.core import Caller

log = get_logger("torl.executor.auth")


class ApiKey(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Caller name.")
    key: str = Field(min_length=16, max_length=512, description="The bearer token (at least 16 characters).")
    rate_per_second: float = Field(50.0, gt=0.0, le=1e6, description="Token bucket refill rate.")
    burst: int = Field(100, ge=1, le=1_000_000, description="Token bucket size.")
    max_concurrent: int = Field(64, ge=1, le=100_000, description="Runs in flight at once.")
    isolation: Isolation = Field("strict", description="Default isolation for this key.")
    allow_session: bool = Field(False, description="Whether this key may ask for session isolation.")


RESERVED_NAMES = ("anonymous", "grpc")  # what keyless callers are called in metrics and logs


class KeysFile(StrictModel):
    keys: list[ApiKey] = Field(default_factory=list, description="The API keys.")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self, n: int = 1) -> float:
        """0 when `n` tokens (at most the burst) were taken, else the seconds until they are available."""
        want = float(min(n, self.burst))
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= want:
            self.tokens -= want
            return 0.0
        return (want - self.tokens) / self.rate


class KeyStore:
    """The current keys, re-read when the file changes."""

    def __init__(self, path: str | Path, check_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._by_digest: dict[bytes, ApiKey] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.buckets: dict[str, TokenBucket] = {}
        self.in_flight: dict[str, int] = {}
        self._load(initial=True)

    def _load(self, initial: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if initial:
                raise ValueError(f"api keys file {self.path}: {e.strerror}") from e
            log.error("api_keys_unreadable", path=str(self.path), error=str(e))
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return
        try:
            raw = self.path.read_text(encoding="utf-8")
            data = yaml.safe_load(raw) if raw.strip() else {}
            parsed = KeysFile.model_validate(data or {})
        except (OSError, yaml.YAMLError, ValidationError, json.JSONDecodeError) as e:
            if initial:
                raise ValueError(f"api keys file {self.path} is invalid: {e}") from e
            log.error("api_keys_invalid_kept_previous", path=str(self.path), error=str(e)[:500])
            self._stamp = stamp
            return
        names = [k.name for k in parsed.keys]
        reserved = sorted(set(names) & set(RESERVED_NAMES))
        if len(set(names)) != len(names) or reserved:
            msg = f"api keys file {self.path}: key names must be unique and not {' or '.join(RESERVED_NAMES)}"
            if initial:
                raise ValueError(msg)
            log.error("api_keys_invalid_kept_previous", path=str(self.path), error=msg)
            self._stamp = stamp
            return
        self._by_digest = {_digest(k.key): k for k in parsed.keys}
        for k in parsed.keys:  # new limits apply at once
            self.buckets[k.name] = TokenBucket(k.rate_per_second, k.burst)
            metrics.initialize_caller(k.name)
        self._stamp = stamp
        log.info("api_keys_loaded", path=str(self.path), keys=len(parsed.keys))

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            with self._lock:
                self._checked = now
                self._load()

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key for an `Authorization: Bearer <token>` value; Unauthenticated otherwise."""
        self.maybe_reload()
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
        digest = _digest(token.strip())
        for known, key in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return key
        raise Unauthenticated("unknown API key")

    def admit(self, key: ApiKey, cost: int = 1) -> None:
        """Charge the rate limit and take `cost` concurrency units; ResourceExhausted when over."""
        bucket = self.buckets.setdefault(key.name, TokenBucket(key.rate_per_second, key.burst))
        wait = bucket.take(cost)  # a batch of n runs costs n tokens (at most the burst)
        if wait > 0:
            metrics.RATE_LIMITED.labels(key.name, "rate").inc()
            raise ResourceExhausted(
                f"rate limit of {key.rate_per_second:g}/s (burst {key.burst}) exceeded for '{key.name}'",
                retry_after_seconds=wait,
            )
        current = self.in_flight.get(key.name, 0)
        if current + cost > key.max_concurrent:
            metrics.RATE_LIMITED.labels(key.name, "concurrency").inc()
            raise ResourceExhausted(
                f"'{key.name}' has {current} runs in flight; its limit is {key.max_concurrent}",
                retry_after_seconds=1.0,
            )
        self.in_flight[key.name] = current + cost

    def release(self, key: ApiKey, cost: int = 1) -> None:
        self.in_flight[key.name] = max(0, self.in_flight.get(key.name, 0) - cost)


@dataclass
class Admission:
    """What an adapter gets after auth: who calls, and how to release what it took."""

    caller: Caller
    key: ApiKey | None
    cost: int = 1

    def release(self, store: KeyStore | None) -> None:
        if store is not None and self.key is not None:
            store.release(self.key, self.cost)


def authenticate(store: KeyStore | None, authorization: str | None) -> ApiKey | None:
    """The caller's key (None: no key store, the anonymous loopback caller); Unauthenticated otherwise."""
    return store.authenticate(authorization) if store is not None else None


def charge(store: KeyStore | None, key: ApiKey | None, default_isolation: Isolation, cost: int = 1) -> Admission:
    """Charge an authenticated caller's rate and concurrency limits (no key: no limits)."""
    if store is None or key is None:
        return Admission(Caller("anonymous", default_isolation, allow_session=True), None, 0)
    store.admit(key, cost)
    return Admission(Caller(key.name, key.isolation, key.allow_session), key, cost)


def admit(store: KeyStore | None, authorization: str | None, default_isolation: Isolation, cost: int = 1) -> Admission:
    """Authenticate, then charge limits (no store: anonymous loopback caller, no limits)."""
    return charge(store, authenticate(store, authorization), default_isolation, cost)
