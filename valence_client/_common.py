"""Pieces both provider clients share: key resolution, transport construction, parsing."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from valence_client.errors import AuthenticationError, PredictionError
from valence_client.limiter import RateLimiter, shared_limiter
from valence_client.redaction import register_secret
from valence_client.transport import RetryPolicy, Timeout, Transport

M = TypeVar("M", bound=BaseModel)


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


def resolve_key(api_key: str | _Secret | None, env_var: str, provider: str) -> str:
    """The key from the argument (plain or `SecretStr`) or the environment; registered for
    redaction before anything can log it."""
    if api_key is not None and not isinstance(api_key, str):
        api_key = api_key.get_secret_value()
    key = api_key or os.environ.get(env_var)
    if not key:
        raise AuthenticationError(
            f"API key not provided and not set in environment ({env_var}).", provider=provider
        )
    register_secret(key)
    return key


def limiter_scope(base_url: str, key: str) -> str:
    """Which shared budget a client belongs to: one per account and endpoint (key not kept)."""
    return hashlib.sha256(f"{base_url}|{key}".encode()).hexdigest()[:16]


def build_transport(
    *,
    provider: str,
    base_url: str,
    key: str,
    auth_headers: Mapping[str, str],
    transport: Transport | None,
    session: requests.Session | None,
    limiter: RateLimiter | None,
    rate_limits: Mapping[str, int] | None,
    timeout: Timeout,
    max_retries: int,
    retry: RetryPolicy | None,
    sleep: Callable[[float], None] | None,
    rng: random.Random | None,
    pool_size: int,
) -> Transport:
    """The given transport, or a new one; the limiter defaults to the process-wide one."""
    if transport is not None:
        return transport
    return Transport(
        provider,
        base_url,
        auth_headers=auth_headers,
        timeout=timeout,
        retry=retry if retry is not None else RetryPolicy(max_retries=max_retries),
        session=session,
        limiter=limiter
        if limiter is not None
        else shared_limiter(provider, rate_limits, scope=limiter_scope(base_url, key)),
        sleep=sleep if sleep is not None else time.sleep,
        rng=rng,
        pool_size=pool_size,
    )


def parse(
    model: type[M],
    body: Any,
    *,
    provider: str,
    what: str,
    request_id: str | None = None,
    job_id: str | None = None,
) -> M:
    """Validate an answer into its model; an unreadable 2xx answer is a `PredictionError`."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PredictionError(
            f"{provider}: unexpected {what} answer: {exc.error_count()} problem(s): {exc.errors(include_url=False, include_input=False)[:3]}",
            provider=provider,
            body=body,
            request_id=request_id,
            job_id=job_id,
        ) from exc
