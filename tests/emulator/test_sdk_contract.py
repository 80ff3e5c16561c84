"""The gate for "we speak the real protocol": the public valenceai 1.0.5 SDK, unchanged,
against the emulator. Only the base URL differs from production use."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf
from valenceai import ValenceClient
from valenceai.exceptions import AudioTooShortError, PredictionError

from emulator.process import EmulatorProcess
from tests.emulator.helpers import sha256, wav
from valence_client.models import VALENCE_MODELS, AsyncStatus, DiscreteResult, RateLimitStatus


@pytest.fixture
def sdk(emu: EmulatorProcess) -> ValenceClient:
    # Explicit arguments: the SDK reads VALENCE_API_KEY / VALENCE_API_BASE_URL at import.
    return ValenceClient(api_key=emu.valence_key, base_url=emu.base_url, show_progress=False)


def test_discrete_file_and_array(sdk: ValenceClient, emu: EmulatorProcess, tmp_path: Path) -> None:
    clip = wav(tmp_path / "clip.wav", 6, samplerate=44100, seed=1)
    by_file = sdk.discrete.emotions(file_path=str(clip))
    result = DiscreteResult.model_validate(by_file)
    assert set(result.all_predictions) == set(VALENCE_MODELS["4emotions"])
    assert result.main_emotion == max(result.all_predictions, key=result.all_predictions.__getitem__)
    assert sum(result.all_predictions.values()) == pytest.approx(1.0, abs=1e-4)

    samples, rate = sf.read(clip, dtype="float32")
    assert rate == 44100  # the JSON payload is taken as 44.1 kHz, as in the quick start
    by_array = sdk.discrete.emotions(audio_array=samples.tolist(), model="7emotions")
    assert set(DiscreteResult.model_validate(by_array).all_predictions) == set(VALENCE_MODELS["7emotions"])

    ledger = emu.ledger()
    assert [e["kind"] for e in ledger["entries"]] == ["valence_discrete", "valence_discrete"]
    assert ledger["entries"][0]["sha256"] == sha256(clip)


def test_discrete_too_short_raises_sdk_error(
    sdk: ValenceClient, emu: EmulatorProcess, tmp_path: Path
) -> None:
    with pytest.raises(AudioTooShortError) as err:
        sdk.discrete.emotions(file_path=str(wav(tmp_path / "short.wav", 2)))
    assert err.value.min_duration == 4.0
    assert err.value.actual_duration == pytest.approx(2.0)
    assert emu.ledger()["entries"] == []  # a refused call is not billed


def test_async_upload_poll_and_timeline_helpers(
    sdk: ValenceClient, emu: EmulatorProcess, tmp_path: Path
) -> None:
    # 12 MiB over 5 MiB parts: three parts PUT in parallel by the SDK's thread pool.
    recording = wav(tmp_path / "call.wav", 400, samplerate=16000, seed=2)
    assert recording.stat().st_size > 12 * 1024 * 1024
    request_id = sdk.asynch.upload(str(recording))
    result = sdk.asynch.emotions(request_id, max_attempts=10, interval_seconds=1)
    parsed = AsyncStatus.model_validate(result)
    assert parsed.status == "completed"
    assert len(parsed.emotions) == 80  # one entry per 5 s
    assert parsed.emotions[1].start_s == 5.0 and parsed.emotions[1].end_s == 10.0

    # The helpers each poll once after the SDK's fixed 5 s sleep: run them side by side.
    with ThreadPoolExecutor(4) as pool:
        timeline = pool.submit(sdk.asynch.get_timeline, request_id)
        at = pool.submit(sdk.asynch.get_emotion_at_time, request_id, 7.5)
        dominant = pool.submit(sdk.asynch.get_dominant_emotion, request_id)
        counts = pool.submit(sdk.asynch.emotion_counts, request_id)
    assert timeline.result() == result["emotions"]
    assert at.result() == result["emotions"][1]
    assert sum(counts.result().values()) == 80
    assert dominant.result() == max(counts.result(), key=counts.result().__getitem__)

    entries = emu.ledger()["entries"]
    assert [(e["kind"], e["request_id"], e["sha256"]) for e in entries] == [
        ("valence_async", request_id, sha256(recording))
    ]
    parts = [r for r in emu.requests_log() if r["route"] == "part"]
    assert sorted(int(r["path"].rsplit("/", 1)[1]) for r in parts) == [1, 2, 3]


def test_async_comprehensive_output_names_every_score_and_no_model(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    """The SDK's `comprehensive_output=True`: every timeline entry has all the model's scores.
    The SDK's upload names no model, so the emulator records none asked for and analyses it
    with the API's default."""
    sdk = ValenceClient(
        api_key=emu.valence_key, base_url=emu.base_url, show_progress=False, comprehensive_output=True
    )
    request_id = sdk.asynch.upload(str(wav(tmp_path / "call.wav", 20, seed=3)))
    result = sdk.asynch.emotions(request_id, max_attempts=10, interval_seconds=1)
    assert len(result["emotions"]) == 4
    for entry in result["emotions"]:
        assert set(entry["all_predictions"]) == set(VALENCE_MODELS["4emotions"])
        assert entry["confidence"] == entry["all_predictions"][entry["emotion"]]
    assert AsyncStatus.model_validate(result).model == "4emotions"
    (entry,) = emu.ledger()["entries"]
    assert entry["model"] is None and entry["analysed_with"] == "4emotions"


def test_async_failed_job_raises_prediction_error(
    sdk: ValenceClient, emu: EmulatorProcess, tmp_path: Path
) -> None:
    emu.set_faults("fail=1")
    request_id = sdk.asynch.upload(str(wav(tmp_path / "doomed.wav", 20)))
    with pytest.raises(PredictionError, match="failed during processing"):
        sdk.asynch.emotions(request_id, max_attempts=5, interval_seconds=1)


def test_rate_limit_status_and_health(sdk: ValenceClient, emu: EmulatorProcess, tmp_path: Path) -> None:
    sdk.discrete.emotions(file_path=str(wav(tmp_path / "clip.wav", 5)))
    status = RateLimitStatus.model_validate(sdk.rate_limit.get_status())
    assert status.max_audio_size_mb == 1024
    assert {n: w.limit for n, w in status.limits.items()} == {
        "second": 10,
        "minute": 100,
        "hour": 1000,
        "day": 10000,
    }
    assert status.current_usage["day"] == 1  # the discrete call; status calls are not counted
    assert status.limits["day"].remaining == 9999
    health = sdk.rate_limit.get_health()
    assert health["status"] == "healthy" and isinstance(health["timestamp"], int)
