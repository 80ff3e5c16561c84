"""Keys and presigned signatures never reach logs or exception text, even at DEBUG."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.client.conftest import VALENCE_KEY, VALSEA_KEY, Sleeps, make_valence, make_valsea
from tests.client.stubs import Recorded, Reply, StubServer
from valence_client import PartSizeAdjuster, ValenceSDKException

SIGNATURE = "5f4dcc3b5aa765d61d8327deb882cf99aabbccddeeff0011"


def test_debug_logs_and_errors_hold_no_key_and_no_signature(
    tmp_path: Path, stub: StubServer, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def initiate(request: Recorded) -> Reply:
        url = f"{stub.base_url}/_parts/1?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SIGNATURE}&signature={SIGNATURE}"
        return Reply(
            json={"upload_id": "u", "request_id": "r", "presigned_urls": [{"part_number": 1, "url": url}]}
        )

    stub.route("POST", r"/v1/asynch/emotion/upload/initiate", initiate)
    stub.route(
        "PUT",
        r"/_parts/1",
        [
            Reply(500),
            Reply(
                403,
                body=f"<Error><Code>SignatureDoesNotMatch</Code><SignatureProvided>{SIGNATURE}</SignatureProvided></Error>".encode(),
            ),
        ],
    )
    # The server echoes the key back in an error, as badly behaved proxies do.
    stub.route("GET", r"/v1/rate-limit/health", Reply(401, json={"error": f"bad key {VALENCE_KEY}"}))
    stub.route(
        "GET",
        r"/v1/prosody/j",
        [Reply(429, headers={"Retry-After": "1"}), Reply(402, json={"error": VALSEA_KEY})],
    )
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(4000))

    errors: list[ValenceSDKException] = []
    with make_valence(stub.base_url, sleeps, part_size_adjuster=PartSizeAdjuster(min_size=1024)) as valence:
        for call in (lambda: valence.asynch.upload(audio), valence.rate_limit.get_health):
            try:
                call()
            except ValenceSDKException as exc:
                errors.append(exc)
                logging.getLogger("valence_client.client").exception("call failed: %s", exc)
                logging.getLogger("some.pipeline.task").error("task failed: %r", exc)
    with make_valsea(stub.base_url, sleeps) as valsea:
        try:
            valsea.status("j")
        except ValenceSDKException as exc:
            errors.append(exc)
            logging.getLogger("valence_client").warning("valsea failed", exc_info=exc)

    assert len(errors) == 3
    assert any("_parts/1" in r.getMessage() for r in caplog.records)  # the URLs were logged ...
    for secret in (VALENCE_KEY, VALSEA_KEY, SIGNATURE, "AKIAEXAMPLE"):  # ... but not these
        assert secret not in caplog.text, secret
        for record in caplog.records:
            assert secret not in record.getMessage() and secret not in (record.exc_text or "")
        for error in errors:
            assert secret not in str(error) and secret not in repr(error), secret
            assert secret not in str(error.body)


def test_an_exception_holding_a_secret_leaves_a_wrapped_function_without_it() -> None:
    from valence_client.redaction import RedactedError, failures_redacted, register_secret

    register_secret("db-pass-7b1e")

    @failures_redacted
    def connect(url: str) -> None:
        raise RuntimeError(f"cannot reach {url}")

    with pytest.raises(RedactedError) as caught:
        connect("postgresql://app:db-pass-7b1e@db/results?X-Amz-Signature=" + SIGNATURE)
    text = str(caught.value)
    assert text.startswith("RuntimeError: cannot reach postgresql://app:[REDACTED]@db/results")
    assert "db-pass-7b1e" not in text and SIGNATURE not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # not chained
    # The traceback still leads to the line that raised.
    assert caught.traceback[-1].name == "connect"


def test_an_exception_without_a_secret_leaves_unchanged() -> None:
    from valence_client.redaction import failures_redacted

    class Refused(Exception):
        pass

    error = Refused("quota exhausted")

    @failures_redacted
    def submit() -> None:
        raise error

    with pytest.raises(Refused) as caught:
        submit()
    assert caught.value is error  # same object: callers that catch by type still do
