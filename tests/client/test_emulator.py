"""Both clients over real HTTP against the emulator (a separate program sharing only the
protocol models): every error code, seeded faults, rate limits, full async and Valsea flows,
and uploads from local files and S3 bodies."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.process import EmulatorProcess
from localstack.sample_data import write_audio
from tests.client.conftest import Sleeps
from valence_client import (
    APIConnectionError,
    AudioTooLongError,
    AudioTooShortError,
    AuthenticationError,
    InsufficientCreditsError,
    JobNotReadyError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ValenceClient,
    ValseaClient,
    WindowRateLimiter,
)
from valence_client.models import VALENCE_MODELS

MIB = 1024 * 1024


class RecordingSleep(list[float]):
    """Records each wait and really waits (for waits a live server expects us to honour)."""

    def __call__(self, seconds: float) -> None:
        import time

        self.append(seconds)
        time.sleep(seconds)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for name, seconds in (("short", 2.0), ("clip", 6.0), ("long12", 12.0), ("call", 400.0)):
        out[name] = folder / f"{name}.wav"
        write_audio(out[name], seconds, seed=len(name))
    return out


@pytest.fixture(scope="module")
def slow_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """Real-time clock (moved by `advance_clock`), the other documented shapes, small parts
    allowed and a low per-second limit."""
    workdir = tmp_path_factory.mktemp("slow-emulator")
    with EmulatorProcess(
        time_scale=1.0,
        timeline_shape="002",
        discrete_shape="000",
        min_part_size=0,
        valence_limits="3,1000,10000,100000",
        data_dir=workdir / "data",
        log_path=workdir / "emulator.log",
    ) as proc:
        yield proc


@pytest.fixture
def slow(slow_emu: EmulatorProcess) -> EmulatorProcess:
    slow_emu.reset()
    return slow_emu


def valence_for(emu: EmulatorProcess, sleep: Callable[[float], None], **options: Any) -> ValenceClient:
    defaults: dict[str, Any] = {
        "api_key": emu.valence_key,
        "base_url": emu.base_url,
        "show_progress": False,
        "limiter": WindowRateLimiter(),  # the documented limits, fresh per test like the server's
        "sleep": sleep,
        "timeout": 60.0,
    }
    return ValenceClient(**{**defaults, **options})


def valsea_for(emu: EmulatorProcess, sleep: Callable[[float], None], **options: Any) -> ValseaClient:
    defaults: dict[str, Any] = {
        "api_key": emu.valsea_key,
        "base_url": emu.base_url,
        "limiter": WindowRateLimiter(),
        "sleep": sleep,
        "timeout": 60.0,
    }
    return ValseaClient(**{**defaults, **options})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def api_log(emu: EmulatorProcess, route: str) -> list[dict[str, Any]]:
    return [r for r in emu.requests_log() if r["route"] == route]


# --------------------------------------------------------------------------- answers


def test_discrete_file_and_samples(emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps) -> None:
    with valence_for(emu, sleeps) as client:
        result = client.discrete.emotions(file_path=str(clips["clip"]), model="7emotions")
        assert set(result.all_predictions) == set(VALENCE_MODELS["7emotions"])
        assert result.main_emotion == max(result.all_predictions, key=result.all_predictions.__getitem__)
        samples = [0.2 * math.sin(i / 7.0) for i in range(int(4.5 * 44100))]
        from_array = client.discrete.emotions(audio_array=samples)
        assert set(from_array.all_predictions) == set(VALENCE_MODELS["4emotions"])
    assert emu.ledger()["by_sha256"][sha256(clips["clip"])]["total"] == 1


def test_discrete_other_shape(slow: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps) -> None:
    """The 000 shape `{emotions, dominant_emotion}` parses into the same model."""
    with valence_for(slow, sleeps) as client:
        result = client.discrete.emotions(file_path=str(clips["clip"]))
    assert result.main_emotion in VALENCE_MODELS["4emotions"] and result.confidence > 0


# --------------------------------------------------------------------------- error codes


def test_validation_errors(emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps) -> None:
    with valence_for(emu, sleeps) as client:
        with pytest.raises(AudioTooShortError) as short:
            client.discrete.emotions(file_path=str(clips["short"]))
        with pytest.raises(AudioTooLongError) as long:
            client.discrete.emotions(file_path=str(clips["long12"]))
    assert (short.value.status, short.value.error_code, short.value.min_duration) == (
        400,
        "AUDIO_TOO_SHORT",
        4.0,
    )
    assert short.value.actual_duration == pytest.approx(2.0, abs=0.01)
    assert (long.value.error_code, long.value.max_duration) == ("AUDIO_TOO_LONG", 10.0)
    assert long.value.actual_duration == pytest.approx(12.0, abs=0.01)


def test_async_upload_too_short_is_rejected_at_complete(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    with valence_for(emu, sleeps) as client, pytest.raises(AudioTooShortError) as info:
        client.asynch.upload(str(clips["short"]))
    assert info.value.error_code == "AUDIO_TOO_SHORT" and info.value.min_duration == 5.0


def test_wrong_keys(emu: EmulatorProcess, sleeps: Sleeps) -> None:
    with (
        valence_for(emu, sleeps, api_key=emu.valence_key + "-revoked") as client,
        pytest.raises(AuthenticationError) as info,
    ):
        client.asynch.status("anything")
    assert info.value.status == 401 and info.value.provider == "valence"
    with (
        valsea_for(emu, sleeps, api_key=f"{emu.valsea_key}-revoked") as valsea,
        pytest.raises(AuthenticationError),
    ):
        valsea.status("anything")


def test_unknown_and_expired_ids(slow: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps) -> None:
    with valence_for(slow, sleeps) as client:
        with pytest.raises(NotFoundError) as unknown:
            client.asynch.status("no-such-request")
        assert (unknown.value.status, unknown.value.request_id) == (404, "no-such-request")
        request_id = client.asynch.upload(str(clips["clip"]))
        slow.advance_clock(25 * 3600)  # past the ~24 h retention
        with pytest.raises(NotFoundError):
            client.asynch.status(request_id)


def test_valsea_out_of_credits_is_not_retried(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    emu.set_credits(0)
    with valsea_for(emu, sleeps) as valsea, pytest.raises(InsufficientCreditsError) as info:
        valsea.submit(str(clips["clip"]))
    assert (info.value.status, info.value.retryable, info.value.provider) == (402, False, "valsea")
    assert len(api_log(emu, "submit")) == 1 and sleeps == []


def test_valsea_result_before_completion_is_not_ready(
    slow: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    with valsea_for(slow, sleeps) as valsea:
        job = valsea.submit(str(clips["clip"]), response_format="verbose_json")
        with pytest.raises(JobNotReadyError) as info:
            valsea.result(job.job_id)
        assert (info.value.status, info.value.job_id) == (409, job.job_id)
        slow.advance_clock(60)
        result = valsea.result(job.job_id)
    assert result.status == "completed" and result.raw_predictions
    assert all(len(u.expressions) == 48 for u in result.raw_predictions)


def test_rate_limit_429_with_retry_after(emu: EmulatorProcess, sleeps: Sleeps) -> None:
    emu.set_faults("429=1,retry_after=3")
    with valence_for(emu, sleeps, max_retries=2, limiter=sleeps.limiter()) as client:
        with pytest.raises(RateLimitError) as info:
            client.asynch.status("r")
    assert info.value.retry_after == 3.0 and info.value.status == 429
    assert sleeps == [3.0, 3.0]  # the transport's waits: the server's hint (the limiter's pause overlaps)
    assert len(api_log(emu, "status")) == 3


def _burn_second_budget(emu: EmulatorProcess) -> None:
    """Another process using the same key: spend this second's budget."""
    import requests

    for _ in range(10):
        answer = requests.get(
            f"{emu.base_url}/v1/asynch/emotion/status/missing",
            headers={"x-api-key": emu.valence_key},
            timeout=10,
        )
        if answer.headers.get("X-RateLimit-Remaining") == "0":
            return


def test_server_rate_limit_is_waited_out(slow: EmulatorProcess) -> None:
    """Another process spent the key's per-second budget, unknown to our limiter: the server's
    429 + Retry-After is honoured (really waited) and the call then goes through."""
    waits = RecordingSleep()
    with valence_for(slow, waits, max_retries=5) as client:
        for _ in range(3):  # a second boundary between burn and call would refill the budget
            _burn_second_budget(slow)
            with pytest.raises(NotFoundError):
                client.asynch.status("missing")  # reached the handler in the end
            if client.stats["rate_limited"]:
                break
        refused = client.stats["rate_limited"]
    assert refused >= 1
    assert waits and all(w >= 1 for w in waits)  # Retry-After: whole seconds, at least 1


def test_client_limiter_synced_from_server_avoids_429(slow: EmulatorProcess) -> None:
    waits = RecordingSleep()
    limiter = WindowRateLimiter(sleep=waits)
    with valence_for(slow, waits, limiter=limiter) as client:
        client.rate_limit.sync_limiter()
        assert limiter.limits == {"second": 3, "minute": 1000, "hour": 10000, "day": 100000}
        for _ in range(7):
            with pytest.raises(NotFoundError):
                client.asynch.status("missing")
        assert client.stats["rate_limited"] == 0
    assert limiter.waits >= 1 and waits  # the backpressure happened on our side
    assert [r["status"] for r in api_log(slow, "status")] == [404] * 7


# --------------------------------------------------------------------------- faults and retries


def test_5xx_and_dropped_connections_are_retried(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    with valence_for(emu, Sleeps()) as setup:
        request_id = setup.asynch.upload(str(clips["clip"]))
    emu.set_faults("5xx=0.4,drop=0.3")
    with valence_for(emu, sleeps, max_retries=8) as client:
        for _ in range(6):
            assert client.asynch.status(request_id).request_id == request_id
        stats = client.stats
    faulted = [r for r in api_log(emu, "status") if r["fault"] in {"5xx", "drop"}]
    assert faulted, "the seeded faults hit no call"
    assert {r["fault"] for r in faulted} == {"5xx", "drop"}
    assert stats["retries"] == len(faulted) == len(sleeps)
    assert stats["connection_errors"] == len([r for r in faulted if r["fault"] == "drop"])


def test_connection_dropped_every_time_gives_up(emu: EmulatorProcess, sleeps: Sleeps) -> None:
    emu.set_faults("drop=1")
    with valence_for(emu, sleeps, max_retries=2) as client, pytest.raises(APIConnectionError) as info:
        client.asynch.status("r")
    assert info.value.retryable and len(api_log(emu, "status")) == 3


def test_retried_discrete_call_keeps_its_idempotency_key_and_bills_once(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    emu.set_faults("5xx=0.6")
    with valence_for(emu, sleeps, max_retries=10) as client:
        client.discrete.emotions(file_path=str(clips["clip"]))
    attempts = api_log(emu, "discrete")
    assert len(attempts) >= 2, "the seeded faults hit no call"
    assert len({a["idempotency_key"] for a in attempts}) == 1 and attempts[0]["idempotency_key"]
    assert emu.ledger()["by_sha256"][sha256(clips["clip"])]["total"] == 1


def test_a_discrete_call_whose_answer_was_lost_is_not_sent_again(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    """The provider did the work and billed it; a resend would pay again (the caller decides)."""
    emu.set_faults("lost=1")
    with valence_for(emu, sleeps, max_retries=10) as client, pytest.raises(APIConnectionError):
        client.discrete.emotions(file_path=str(clips["clip"]))
    assert len(api_log(emu, "discrete")) == 1
    assert emu.ledger()["by_sha256"][sha256(clips["clip"])]["total"] == 1


class LimiterWithoutItsDatabase(WindowRateLimiter):
    """A shared limiter whose backing database went away after the call was admitted."""

    def update_from_headers(self, headers: Any) -> None:
        raise ConnectionError("server closed the connection unexpectedly (injected)")


def test_an_answer_stands_when_the_limiter_cannot_take_its_headers(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer of a billed call is a fact; the rate-limit headers it carries are advice.
    Raising here would make the caller send the call again and pay twice."""
    caplog.set_level(logging.WARNING)
    with valence_for(emu, sleeps, limiter=LimiterWithoutItsDatabase()) as client:
        result = client.discrete.emotions(file_path=str(clips["clip"]))
    assert result.main_emotion
    assert len(api_log(emu, "discrete")) == 1
    assert emu.ledger()["by_sha256"][sha256(clips["clip"])]["total"] == 1
    assert any("the answer stands" in r.getMessage() for r in caplog.records)


def test_initiate_is_not_resent_after_a_server_error(
    emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    emu.set_faults("5xx=1")
    with valence_for(emu, sleeps) as client, pytest.raises(ServerError):
        client.asynch.upload(str(clips["call"]))
    assert len(api_log(emu, "initiate")) == 1


def test_upload_survives_part_faults(emu: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps) -> None:
    emu.set_faults("parts=1,5xx=0.3,drop=0.2")
    with valence_for(emu, sleeps, max_retries=8) as client:
        request_id = client.asynch.upload(str(clips["call"]))
    emu.set_faults("")
    parts = api_log(emu, "part")
    assert any(p["fault"] for p in parts), "the seeded faults hit no part"
    with valence_for(emu, sleeps) as client:
        status = client.asynch.wait(request_id, initial_interval_s=0.05, max_interval_s=0.2, deadline_s=None)
    assert status.status == "completed"


# --------------------------------------------------------------------------- full flows


def test_async_flow_from_a_local_file(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    waits = RecordingSleep()
    events: list[str] = []
    with valence_for(emu, waits, comprehensive_output=True) as client:
        request_id = client.asynch.upload(
            str(clips["call"]), on_initiated=lambda rid: events.append(f"{rid}:{len(api_log(emu, 'part'))}")
        )
        assert events == [f"{request_id}:0"]  # id handed over before any part went up
        status = client.asynch.wait(request_id, initial_interval_s=0.05, max_interval_s=0.5, deadline_s=None)
        timeline = client.asynch.get_timeline(status)
    assert status.status == "completed" and len(timeline) == 80  # 400 s in 5 s segments
    assert timeline[1].start_s == 5.0 and timeline[1].all_predictions is not None
    assert client.asynch.get_dominant_emotion(status) in VALENCE_MODELS["4emotions"]
    parts = api_log(emu, "part")
    assert len(parts) == math.ceil(clips["call"].stat().st_size / (5 * MIB))
    assert emu.ledger()["by_sha256"][sha256(clips["call"])]["total"] == 1


def test_async_flow_in_the_other_timeline_shape_with_small_parts(
    slow: EmulatorProcess, clips: dict[str, Path], sleeps: Sleeps
) -> None:
    from valence_client import PartSizeAdjuster

    with valence_for(
        slow, sleeps, part_size=256 * 1024, part_size_adjuster=PartSizeAdjuster(min_size=1)
    ) as client:
        request_id = client.asynch.upload(str(clips["long12"]))
        assert client.asynch.status(request_id).status in {"upload_completed", "processing"}
        slow.advance_clock(600)
        status = client.asynch.status(request_id)
    assert len(api_log(slow, "part")) == math.ceil(clips["long12"].stat().st_size / (256 * 1024))
    assert status.status == "completed"
    assert [(s.start_s, s.end_s) for s in status.emotions] == [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0)]


def test_upload_and_submit_from_s3_bodies(
    emu: EmulatorProcess, clips: dict[str, Path], s3_client: Any, bucket: str, sleeps: Sleeps
) -> None:
    s3_client.upload_file(str(clips["call"]), bucket, "calls/call.wav")
    with valence_for(emu, sleeps) as client:
        obj = s3_client.get_object(Bucket=bucket, Key="calls/call.wav")
        request_id = client.asynch.upload(obj["Body"], size=obj["ContentLength"], file_name="call.wav")
        status = client.asynch.wait(request_id, initial_interval_s=0.05, max_interval_s=0.5, deadline_s=None)
    assert status.status == "completed"
    with valsea_for(emu, sleeps) as valsea:
        obj = s3_client.get_object(Bucket=bucket, Key="calls/call.wav")
        job = valsea.submit(obj["Body"], size=obj["ContentLength"], file_name="call.wav")
        result = valsea.wait(job.job_id, initial_interval_s=0.05, max_interval_s=0.5)
    assert 0.0 <= result.emotions.urgency <= 1.0
    billed = emu.ledger()["by_sha256"][sha256(clips["call"])]
    assert (billed["valence_async"], billed["valsea_job"]) == (1, 1)
