"""What happens to every request before (and after) its handler, as raw ASGI.

Order for provider API paths: auth (401, or 503 for Valsea without a key) -> rate limit (429,
counted per key) -> faults (drop / 5xx / 429 / slow / lost) -> handler; the `X-RateLimit-*`
and `X-Request-Id` headers are added to the answer, and the request lands in the request log
(method, path, redacted query, status, key id, fault). Presigned part PUTs skip auth and the
limiter (the signature is their auth) and meet faults only with `parts=1`. Admin paths
(`/_emulator/...`, `/health`) and unknown paths go straight to the app.

"Dropping" needs the server's transport: with uvicorn's h11 protocol the `send` callable is a
bound method of the request cycle, whose `transport` we abort. The client then sees the
connection close with no answer at all (requests raises ConnectionError).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from emulator.state import EmulatorState, key_id

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    provider: str  # "valence" | "valsea" | "parts"
    name: str
    counted: bool = True


_ROUTES: tuple[tuple[re.Pattern[str], Route], ...] = tuple(
    (re.compile(pattern), route)
    for pattern, route in (
        (r"^/(?:v1/discrete/emotion|emotionprediction)/?$", Route("valence", "discrete")),
        (r"^/v1/asynch/emotion/upload/initiate/?$", Route("valence", "initiate")),
        (r"^/v1/asynch/emotion/upload/complete/?$", Route("valence", "complete")),
        (r"^/v1/asynch/emotion/status/[^/]+/?$", Route("valence", "status")),
        (r"^/v1/rate-limit/status/?$", Route("valence", "rate-limit-status", counted=False)),
        (r"^/v1/rate-limit/health/?$", Route("valence", "rate-limit-health", counted=False)),
        (r"^/v1/prosody/?$", Route("valsea", "submit")),
        (r"^/v1/prosody/[^/]+/?$", Route("valsea", "job")),
        (r"^/v1/prosody/[^/]+/result/?$", Route("valsea", "result")),
        (r"^/_parts/[^/]+/[^/]+/?$", Route("parts", "part", counted=False)),
    )
)

_SECRET_QUERY = re.compile(
    r"(?i)((?:^|&)(?:signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&]*"
)


def classify(path: str) -> Route | None:
    for pattern, route in _ROUTES:
        if pattern.match(path):
            return route
    return None


def redact_query(query: str) -> str:
    return _SECRET_QUERY.sub(r"\1[REDACTED]", query)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class ConnectionDropped(Exception):
    """Raised when the server offers no transport to abort (the fault then becomes a 500)."""


async def drop_connection(receive: Receive, send: Send) -> None:
    """Close the client's connection without an answer."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionDropped("this server does not expose its transport; cannot drop")
    transport.abort()
    # Let the server notice the disconnect, so it neither answers nor logs an error.
    try:
        async with asyncio.timeout(2.0):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass


class Gate:
    """Wraps the FastAPI app (see `EmulatorApp.__call__`)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        route = classify(scope["path"])
        if route is None:
            await app(scope, receive, send)
            return
        state = self.state
        method = scope["method"]
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": method,
            "path": scope["path"],
            "query": redact_query(scope.get("query_string", b"").decode("latin-1")),
            "provider": route.provider,
            "route": route.name,
            "key": None,
            "status": None,
            "fault": None,
            "x_request_id": uuid.uuid4().hex,
            "idempotency_key": _header(scope, b"idempotency-key"),
        }
        headers = {"X-Request-Id": entry["x_request_id"]}
        try:
            await self._handle(scope, receive, send, app, route, entry, headers)
        finally:
            entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
            state.log_request(entry)
            log.info(
                "%s %s -> %s%s",
                method,
                scope["path"],
                entry["status"],
                f" [{entry['fault']}]" * bool(entry["fault"]),
            )

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: ASGIApp,
        route: Route,
        entry: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        state = self.state

        async def reply(status: int, body: dict[str, Any]) -> None:
            entry["status"] = status
            await send_json(send, status, body, headers)

        # 1. auth
        if route.provider == "valence":
            key = _header(scope, b"x-api-key")
            if not key or key not in state.valence_keys:
                return await reply(401, {"error": "Invalid or missing API key (x-api-key)"})
            limiter = state.valence_limiter
        elif route.provider == "valsea":
            if not state.valsea_keys:
                return await reply(503, {"error": "service not configured"})
            auth = _header(scope, b"authorization") or ""
            scheme, _, key = auth.partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or key not in state.valsea_keys:
                return await reply(401, {"error": "Missing or invalid API key (Authorization: Bearer)"})
            limiter = state.valsea_limiter
        else:
            key = None
        owner = key_id(key) if key else None
        entry["key"] = owner
        scope.setdefault("state", {})["emulator_owner"] = owner

        # 2. rate limit
        if route.counted and owner is not None:
            admission = limiter.admit(owner)
            headers.update(admission.headers())
            if not admission.allowed:
                return await reply(
                    429, {"error": "rate limit exceeded", "retry_after": admission.retry_after}
                )

        # 3. faults
        decision = state.faults.decide(f"{scope['method']} {route.name}", part=route.provider == "parts")
        if decision.delay_s:
            entry["fault"] = "slow"
            await asyncio.sleep(decision.delay_s)
        if decision.outcome is not None:
            entry["fault"] = decision.outcome
        if decision.outcome == "drop":
            return await drop_connection(receive, send)
        if decision.outcome == "5xx":
            return await reply(decision.status, {"error": "injected server error"})
        if decision.outcome == "429":
            retry_after = state.faults.spec.retry_after
            headers.update(
                {
                    "Retry-After": str(retry_after),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int(time.time()) + retry_after),
                }
            )
            headers.setdefault("X-RateLimit-Limit", "0")
            return await reply(429, {"error": "rate limit exceeded", "retry_after": retry_after})

        # 4. the handler
        lost = decision.outcome == "lost"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            if not lost:
                await send(message)

        await app(scope, receive, send_with_headers)
        if lost:
            await drop_connection(receive, send)
