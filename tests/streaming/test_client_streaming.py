"""Our client's `client.streaming` against the emulator over loopback: the SDK's surface, typed
events in order, refusals, restarts, pacing, and keys kept out of sight."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emulator.process import EmulatorProcess
from localstack.sample_data import write_audio
from tests.client.conftest import Sleeps
from tests.streaming.helpers import Events, discrete_of, speech_pcm, ws_url
from valence_client import (
    APIConnectionError,
    AuthenticationError,
    RateLimitError,
    ReconnectPolicy,
    StreamConnection,
    ValenceClient,
    WindowRateLimiter,
)
from valence_client.stream_protocol import PredictionEvent, window_bytes

FAST_RECONNECT = ReconnectPolicy(initial_s=0.05, max_s=0.5)


def client_for(emu: EmulatorProcess, key: str | None = None) -> ValenceClient:
    return ValenceClient(
        api_key=key or emu.valence_key,
        base_url=emu.base_url,
        websocket_url=ws_url(emu),
        limiter=WindowRateLimiter(),
    )


def watch(stream: StreamConnection) -> Events:
    events = Events()
    stream.on_connected(events.recorder("connected"))
    stream.on_prediction(events.recorder("prediction"))
    stream.on_error(events.recorder("error"))
    stream.on_warning(events.recorder("warning"))
    stream.on_disconnected(events.recorder("disconnected"))
    return events


def test_streams_a_wav_file_and_gets_the_same_predictions_as_discrete(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    path = tmp_path / "call.wav"
    write_audio(path, 12.5, samplerate=16000, seed=6)
    stream = client_for(emu).streaming.connect(model="7emotions")
    events = watch(stream)
    stream.connect()
    assert stream.connected
    report = stream.stream_wav(path, pace=0)
    assert stream.flush(60)
    predictions = events.wait_for("prediction", 2)
    stream.disconnect()
    assert not stream.connected

    assert (report.audio_s, report.sample_rate) == (12.5, 16000)
    pcm = sf.read(path, dtype="int16")[0].astype("<i2").tobytes()
    window = window_bytes(16000)  # the file's rate travels with each message
    for i, prediction in enumerate(predictions):
        assert isinstance(prediction, PredictionEvent)
        assert prediction["main_emotion"] == prediction.main_emotion  # SDK-style access too
        reference = discrete_of(emu, pcm[i * window : (i + 1) * window], samplerate=16000, model="7emotions")
        assert prediction.all_predictions == reference.all_predictions
    session = events["connected"][0].session_id
    assert {e["session_id"] for e in emu.ledger()["entries"] if e["kind"] == "valence_stream"} == {session}
    stats = stream.stats
    assert (stats["sent_bytes"], stats["dropped_chunks"], stats["predictions"]) == (report.bytes, 0, 2)


def test_callbacks_see_predictions_in_the_order_the_server_sent_them(emu: EmulatorProcess) -> None:
    stream = client_for(emu).streaming.connect()
    events = watch(stream)
    stream.connect()
    stream.stream_wav([speech_pcm(40.0, seed=7)], pace=0)  # eight windows back to back
    predictions = events.wait_for("prediction", 8)
    stream.disconnect()
    assert [p.start_time for p in predictions] == [5.0 * i for i in range(8)]


def test_bad_key_raises_at_connect_reports_the_error_and_is_not_retried(
    emu: EmulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    key = "vk_wrong_Zm9vYmFyYmF6cXV4"
    stream = client_for(emu, key=key).streaming.connect(reconnect=FAST_RECONNECT)
    events = watch(stream)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as err:
        stream.connect()
    assert err.value.error_code == "INVALID_API_KEY"
    assert events.wait_for("error", 1)[0].error_code == "INVALID_API_KEY"
    assert not stream.connected and events["connected"] == []
    with pytest.raises(APIConnectionError):
        stream.send_audio(b"\x00\x00")
    log = [e for e in emu.requests_log() if e["route"] == "stream-connect"]
    assert [e["status"] for e in log] == [401]  # refused once, never retried
    for text in (str(err.value), repr(err.value), repr(stream), caplog.text):
        assert key not in text


def test_rate_limited_connect_raises_rate_limit_error_with_the_wait(
    make_emulator: Callable[..., EmulatorProcess],
) -> None:
    emu = make_emulator(valence_limits=(100, 100, 100, 2))  # two requests a day
    first = client_for(emu).streaming.connect()
    events = watch(first)
    first.connect()  # request 1
    first.stream_wav([speech_pcm(10.0, seed=13)], pace=0)  # window 1 is request 2, window 2 refused
    assert events.wait_for("error", 1)[0].error_code == "RATE_LIMITED"
    assert len(events["prediction"]) == 1
    first.disconnect()
    with pytest.raises(RateLimitError) as err:
        client_for(emu).streaming.connect().connect()
    assert err.value.retry_after is not None and err.value.retry_after >= 1


def test_invalid_model_raises_value_error_before_any_connection(emu: EmulatorProcess) -> None:
    client = client_for(emu)
    with pytest.raises(ValueError, match="Invalid model"):
        client.streaming.connect(model="5emotions")
    with pytest.raises(ValueError, match="Invalid model"):
        StreamConnection(ws_url(emu), emu.valence_key, model="4emotion")
    assert [e for e in emu.requests_log() if e["route"] == "stream-connect"] == []


def test_send_audio_needs_a_connection_and_whole_samples(emu: EmulatorProcess) -> None:
    stream = client_for(emu).streaming.connect()
    with pytest.raises(APIConnectionError, match="Not connected"):
        stream.send_audio(b"\x00\x00")
    stream.connect()
    with pytest.raises(ValueError, match="int16"):
        stream.send_audio(b"\x00\x01\x02")
    stream.disconnect()
    with pytest.raises(APIConnectionError):
        stream.send_audio(b"\x00\x00")


def test_survives_a_server_restart_mid_stream(make_emulator: Callable[..., EmulatorProcess]) -> None:
    emu = make_emulator()
    stream = client_for(emu).streaming.connect(reconnect=FAST_RECONNECT)
    events = watch(stream)
    stream.connect()
    stream.stream_wav([speech_pcm(10.0, seed=8)], pace=0)
    events.wait_for("prediction", 2)

    emu.stop()  # the server goes away mid-stream...
    events.wait_for("disconnected", 1)
    stream.stream_wav([speech_pcm(10.0, seed=9)], pace=0)  # ...audio keeps coming (queued)
    emu.restart()  # same port, same keys, no memory of the old session
    predictions = events.wait_for("prediction", 4)
    sessions = [e.session_id for e in events.wait_for("connected", 2)]
    stream.disconnect()

    assert len(set(sessions)) == 2
    assert [p.start_time for p in predictions] == [0.0, 5.0, 0.0, 5.0]  # the new session starts at 0
    stats = stream.stats
    assert (stats["reconnects"], stats["dropped_chunks"]) == (1, 0)
    entries = [e for e in emu.ledger()["entries"] if e["kind"] == "valence_stream"]
    assert [e["session_id"] for e in entries] == [sessions[1]] * 2


def test_gives_up_after_max_attempts_and_wait_returns(make_emulator: Callable[..., EmulatorProcess]) -> None:
    emu = make_emulator()
    policy = ReconnectPolicy(initial_s=0.01, max_s=0.05, max_attempts=3)
    stream = client_for(emu).streaming.connect(reconnect=policy)
    events = watch(stream)
    stream.connect()
    emu.stop()
    stream.wait()  # returns once reconnecting is given up
    assert events.wait_for("error", 1)[-1].error_code == "RECONNECT_FAILED"
    assert stream.stats["reconnect_attempts"] == 3
    assert isinstance(stream.last_error, APIConnectionError)
    with pytest.raises(APIConnectionError):
        stream.send_audio(b"\x00\x00")


def test_stream_wav_paces_chunks_like_a_live_source(emu: EmulatorProcess) -> None:
    sleeps = Sleeps()
    stream = client_for(emu).streaming.connect(clock=sleeps.clock, sleep=sleeps)
    events = watch(stream)
    stream.connect()
    pcm = np.frombuffer(speech_pcm(5.0, seed=10), dtype="<i2")
    blocks = np.split(pcm, 10)  # ten 0.5 s chunks, as int16 arrays
    report = stream.stream_wav(iter(blocks), pace=2.0)
    # At twice real time, each 0.5 s chunk leaves 0.25 s after the previous one (on the fake
    # clock); the first once it has been "recorded".
    assert sleeps == [0.25] * 10
    sleeps.clear()
    stream.stream_wav(iter(blocks), pace=0)
    assert sleeps == []
    events.wait_for("prediction", 2)
    stream.disconnect()
    assert report.chunks == 10 and report.audio_s == pytest.approx(5.0)
