"""The gate for "we serve the real streaming protocol": the public valenceai 1.0.5 SDK's
`StreamConnection`, unchanged, against the emulator's Socket.IO endpoint over loopback. Only
the URLs differ from production use."""

from __future__ import annotations

import logging

import pytest
from valenceai import ValenceClient

from emulator.process import EmulatorProcess
from tests.streaming.helpers import RATE, Events, chunks, discrete_of, speech_pcm, wait_until, ws_url
from valence_client.models import VALENCE_MODELS
from valence_client.stream_protocol import window_bytes


def sdk(emu: EmulatorProcess, key: str | None = None) -> ValenceClient:
    # Explicit arguments: the SDK reads VALENCE_* at import.
    return ValenceClient(
        api_key=key or emu.valence_key, base_url=emu.base_url, websocket_url=ws_url(emu), show_progress=False
    )


@pytest.mark.parametrize("model", ["4emotions", "7emotions"])
def test_sdk_streams_and_gets_one_prediction_per_5_s(emu: EmulatorProcess, model: str) -> None:
    events = Events()
    stream = sdk(emu).streaming.connect(model=model)
    stream.on_connected(events.recorder("connected"))
    stream.on_prediction(events.recorder("prediction"))
    stream.on_error(events.recorder("error"))
    stream.connect()
    assert stream.connected
    session = events.wait_for("connected", 1)[0]["session_id"]

    pcm = speech_pcm(12.0, seed=4)  # two full windows and a 2 s tail that gets none
    for chunk in chunks(pcm):
        stream.send_audio(chunk)
    predictions = events.wait_for("prediction", 2)
    stream.disconnect()
    assert not stream.connected

    assert len(predictions) == 2 and events["error"] == []
    window = window_bytes(RATE)  # the SDK sends no sample rate: 44.1 kHz is assumed
    for i, prediction in enumerate(predictions):
        assert set(prediction) >= {"main_emotion", "confidence", "all_predictions", "timestamp"}
        assert set(prediction["all_predictions"]) == set(VALENCE_MODELS[model])
        assert (prediction["start_time"], prediction["end_time"]) == (5.0 * i, 5.0 * (i + 1))
        # The same predictor as the other paths: the discrete answer for the same 5 s.
        reference = discrete_of(emu, pcm[i * window : (i + 1) * window], model=model)
        assert prediction["main_emotion"] == reference.main_emotion
        assert prediction["all_predictions"] == reference.all_predictions

    entries = [e for e in emu.ledger()["entries"] if e["kind"] == "valence_stream"]
    assert [(e["session_id"], e["start_time"], e["model"]) for e in entries] == [
        (session, 0.0, model),
        (session, 5.0, model),
    ]


def test_sdk_with_a_bad_key_gets_an_error_event_and_is_disconnected(emu: EmulatorProcess) -> None:
    events = Events()
    stream = sdk(emu, key="not-a-key").streaming.connect()
    stream.on_connected(events.recorder("connected"))
    stream.on_error(events.recorder("error"))
    stream.connect()  # the SDK's connect returns; the refusal arrives as events
    error = events.wait_for("error", 1)[0]
    assert "key" in error["error"].lower()
    wait_until(lambda: not stream.connected, "the server disconnects the refused client")
    assert events["connected"] == []
    log = [e for e in emu.requests_log() if e["route"] == "stream-connect"]
    assert [(e["status"], e["key"]) for e in log] == [(401, None)]


def test_sdk_malformed_chunk_draws_a_warning_and_the_stream_goes_on(
    emu: EmulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    stream = sdk(emu).streaming.connect()
    stream.on_prediction(events.recorder("prediction"))
    stream.connect()
    with caplog.at_level(logging.WARNING, logger="valenceai"):
        stream.send_audio(b"\x01\x02\x03")  # not whole int16 samples
        for chunk in chunks(speech_pcm(5.0, seed=1)):
            stream.send_audio(chunk)
        events.wait_for("prediction", 1)
        wait_until(lambda: _sdk_warnings(caplog), "the SDK logs the server's warning")
    stream.disconnect()
    warnings = _sdk_warnings(caplog)
    assert len(warnings) == 1 and "int16" in warnings[0]


def _sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    # The SDK has no warning callback; it logs `WebSocket warning: <message>`.
    return [r.getMessage() for r in caplog.records if "WebSocket warning" in r.getMessage()]
