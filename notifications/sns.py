"""Amazon SNS message signatures: the alternative to the shared secret for SNS deliveries.

SNS signs each message with a key whose certificate it serves from `SigningCertURL`. A valid
signature proves the message came from SNS, not that it came from *your* topic (anyone can
subscribe this endpoint to a topic of their own), so a signed message is accepted only from
the topics listed in `VALENCE_PIPELINE_EVENTS_SNS_TOPIC_ARNS`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")

# The fields signed, in order, per message type (absent optional fields are skipped).
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}

FetchCert = Callable[[str], bytes]
"""Returns the PEM certificate at an SNS SigningCertURL."""


def is_sns_url(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme == "https" and bool(_SNS_HOST.fullmatch(parsed.hostname or ""))


@lru_cache(maxsize=16)
def fetch_signing_cert(url: str) -> bytes:
    """The certificate, from AWS's SNS hosts only (SNS rotates them rarely: cached)."""
    import requests

    if not is_sns_url(url):
        raise ValueError("SigningCertURL is not an https URL of Amazon SNS")
    resp = requests.get(url, timeout=10)
    resp.raise_for_status()
    return resp.content


def string_to_sign(message: dict[str, Any]) -> bytes:
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise ValueError("not an SNS message type")
    parts = []
    for name in fields:
        if name in message and message[name] is not None:
            parts.append(f"{name}\n{message[name]}\n")
    return "".join(parts).encode()


def verify(body: bytes, topic_arns: Sequence[str], fetch_cert: FetchCert = fetch_signing_cert) -> bool:
    """True when `body` is an SNS message from one of `topic_arns` with a valid signature."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if not topic_arns:
        return False
    try:
        message = json.loads(body)
        if not isinstance(message, dict) or message.get("TopicArn") not in topic_arns:
            return False
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(str(message.get("SignatureVersion")))  # noqa: S303 - SNS's version 1 is SHA1
        cert_url = str(message.get("SigningCertURL", ""))
        if algorithm is None or not is_sns_url(cert_url):
            return False
        signature = base64.b64decode(str(message["Signature"]), validate=True)
        key = x509.load_pem_x509_certificate(fetch_cert(cert_url)).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
        return True
    except (InvalidSignature, ValueError, KeyError, binascii.Error, UnicodeDecodeError):
        return False
