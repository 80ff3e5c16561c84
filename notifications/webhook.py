"""The HTTP endpoint object stores POST their notifications to (an ASGI app; the command serves
it with uvicorn).

Every request must carry the shared secret, in any of the forms the senders can be configured
to send: `Authorization: Bearer <secret>` (MinIO's `auth_token`, an EventBridge API
destination), the `X-Valence-Pipeline-Token` header, HTTP Basic with the secret as password
(SNS: `https://user:<secret>@host/`), or a `token` query parameter (SNS, Ceph push endpoints).
It is compared in constant time and never logged; uvicorn's access log, which would print the
query string, stays off. Messages from allowed SNS topics may instead carry SNS's own signature
(see `notifications.sns`).

Answers: 200 with counts (duplicates and redeliveries included: a version noticed before is
simply not new), 401 without the secret, 400 for a body that is not a notification, 413 for
an oversized body, 503 when the database cannot take the notices (senders retry).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from notifications import sns
from notifications.messages import NotificationError, ObjectNotice, parse_notification

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""SNS messages are at most 256 KiB; S3 sends one record per request."""

TOKEN_HEADER = "x-valence-pipeline-token"  # noqa: S105 - a header name, not a secret

Record = Callable[[list[ObjectNotice]], int]
"""Stores notices; returns how many were new."""
Fetch = Callable[[str], None]
"""GETs an SNS SubscribeURL (raises when it fails)."""


def fetch_sns_subscribe_url(url: str) -> None:
    """Confirm an SNS subscription, only ever against AWS's own SNS hosts (the URL comes from
    the request body: anything else would let a caller make this server fetch any URL)."""
    import requests

    if not sns.is_sns_url(url):
        raise NotificationError("SubscribeURL is not an https URL of Amazon SNS")
    requests.get(url, timeout=10).raise_for_status()


def _presented(request: Request) -> list[str]:
    """Every secret the request offers, in the forms senders use."""
    offered = []
    header = request.headers.get(TOKEN_HEADER)
    if header:
        offered.append(header)
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        offered.append(value.strip())
    elif scheme.lower() == "basic" and value:
        try:
            offered.append(base64.b64decode(value.strip(), validate=True).decode().partition(":")[2])
        except (binascii.Error, UnicodeDecodeError):
            pass
    token = request.query_params.get("token")
    if token:
        offered.append(token)
    return offered


def _authorized(request: Request, secret: bytes) -> bool:
    # Compare every offered value (no early exit) in constant time.
    results = [hmac.compare_digest(value.encode(), secret) for value in _presented(request)]
    return any(results)


def create_app(
    secret: SecretStr,
    record: Record,
    fetch: Fetch = fetch_sns_subscribe_url,
    suffixes: Sequence[str] | None = None,
    sns_topic_arns: Sequence[str] = (),
    fetch_cert: sns.FetchCert = sns.fetch_signing_cert,
) -> FastAPI:
    """`suffixes`: only keys ending so (case-insensitive) are recorded, e.g. the audio
    suffixes; others count as ignored (a bucket notification usually covers every key).
    `sns_topic_arns`: SNS messages from these topics may carry SNS's signature instead of the
    secret."""
    if not secret.get_secret_value():
        raise ValueError("the webhook needs a non-empty shared secret")
    key = secret.get_secret_value().encode()
    app = FastAPI(title="valence-pipeline upload notifications", docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/")
    async def receive(request: Request) -> JSONResponse:
        client = request.client.host if request.client else "?"
        with_secret = _authorized(request, key)
        if not with_secret and not sns_topic_arns:
            log.warning("notification from %s refused: no valid secret", client)
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:  # refused before it is read
            log.warning("notification from %s refused: %s bytes", client, declared)
            return JSONResponse({"error": "body too large"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            log.warning("notification from %s refused: %d bytes", client, len(body))
            return JSONResponse({"error": "body too large"}, status_code=413)
        if not with_secret and not sns.verify(body, sns_topic_arns, fetch_cert):
            log.warning("notification from %s refused: no valid secret or SNS signature", client)
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            parsed = parse_notification(body)
            if parsed.confirmation is not None:
                fetch(parsed.confirmation.subscribe_url)
                log.info("SNS subscription to %s confirmed", parsed.confirmation.topic_arn)
                return JSONResponse({"confirmed": parsed.confirmation.topic_arn})
        except NotificationError as exc:
            log.warning("notification from %s rejected: %s", client, exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:  # noqa: BLE001 - the confirmation fetch failed: SNS retries
            log.warning("SNS subscription confirmation failed: %s", type(exc).__name__)
            return JSONResponse({"error": "confirmation failed"}, status_code=503)
        wanted = parsed.notices
        if suffixes is not None:
            ends = tuple(x.lower() for x in suffixes)
            wanted = [n for n in parsed.notices if n.key.lower().endswith(ends)]
            parsed.ignored += len(parsed.notices) - len(wanted)
            parsed.notices = wanted
        try:
            new = record(parsed.notices) if parsed.notices else 0
        except Exception:  # e.g. the database is down: the sender retries later
            log.exception("could not record %d notice(s) from %s", len(parsed.notices), client)
            return JSONResponse({"error": "not recorded, try again"}, status_code=503)
        log.info(
            "notification from %s: %d object(s), %d new, %d other event(s)",
            client,
            len(parsed.notices),
            new,
            parsed.ignored,
        )
        return JSONResponse(
            {"objects": len(parsed.notices), "new": new, "ignored": parsed.ignored}, status_code=200
        )

    return app
