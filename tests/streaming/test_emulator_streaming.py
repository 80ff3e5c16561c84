"""The emulator's Socket.IO endpoint driven by a bare python-socketio client: malformed chunks,
sample rates, and the per-key rate limits it shares with the HTTP API."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import socketio

from emulator.process import EmulatorProcess
from tests.streaming.helpers import Events, discrete_of, speech_pcm, wait_until, ws_url


class RawClient:
    """A plain Socket.IO client recording every server event."""

    def __init__(self, emu: EmulatorProcess, key: str | None) -> None:
        self.events = Events()
        self.sio = socketio.Client(reconnection=False)
        for name in ("connected", "prediction", "error", "warning", "disconnect"):
            self.sio.on(name, self.events.recorder(name))
        self.sio.connect(ws_url(emu), auth={"api_key": key} if key else None, transports=["websocket"])

    def send(self, message: Any) -> None:
        self.sio.emit("message", message)

    def send_pcm(self, pcm: bytes, **extra: Any) -> None:
        self.send(audio(pcm, **extra))

    def close(self) -> None:
        self.sio.disconnect()


def audio(pcm: bytes, model: str = "4emotions", **extra: Any) -> dict[str, Any]:
    payload = base64.b64encode(pcm).decode()
    return {"service": "emotion", "action": "prediction", "model": model, "payload": payload, **extra}


@pytest.fixture
def raw(emu: EmulatorProcess) -> Iterator[Callable[..., RawClient]]:
    opened: list[RawClient] = []

    def open_client(key: str | None = emu.valence_key, on: EmulatorProcess = emu) -> RawClient:
        client = RawClient(on, key)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def test_malformed_chunks_each_draw_a_warning_and_are_dropped(
    emu: EmulatorProcess, raw: Callable[..., RawClient]
) -> None:
    client = raw()
    client.events.wait_for("connected", 1)
    good = speech_pcm(5.0, seed=2)
    malformed: list[Any] = [
        "not an object",
        {"service": "emotion", "action": "prediction", "model": "4emotions"},  # no payload
        audio(good[:4410], service="prosody"),
        audio(good[:4410], model="5emotions"),
        {**audio(good[:4410]), "payload": "%%% not base64 %%%"},
        audio(b"\x00\x01\x02"),  # half a sample
        audio(good[:4410], sample_rate=-5),
    ]
    for message in malformed:
        client.send(message)
    client.send_pcm(good)
    warnings = client.events.wait_for("warning", len(malformed))
    client.events.wait_for("prediction", 1)
    assert all(w["message"].startswith("chunk ignored") for w in warnings)
    assert client.events["error"] == [] and client.sio.connected
    # Only the good 5 s counted: none of the dropped bytes leaked into the window.
    assert [e["kind"] for e in emu.ledger()["entries"]] == ["valence_stream"]


def test_sample_rate_field_sets_the_window_and_cannot_change_mid_window(
    emu: EmulatorProcess, raw: Callable[..., RawClient]
) -> None:
    client = raw()
    pcm = speech_pcm(5.0, samplerate=16000, seed=3)
    client.send_pcm(pcm[:32000], sample_rate=16000)  # 1 s at 16 kHz
    client.send_pcm(pcm[:32000], sample_rate=8000)  # another rate before the window is full
    client.events.wait_for("warning", 1)
    client.send_pcm(pcm[32000:], sample_rate=16000)  # the rest of the 5 s
    prediction = client.events.wait_for("prediction", 1)[0]
    reference = discrete_of(emu, pcm, samplerate=16000)
    assert prediction["all_predictions"] == reference.all_predictions
    assert "sample_rate 8000" in client.events["warning"][0]["message"]


def test_missing_auth_is_refused_with_an_error_then_a_disconnect(raw: Callable[..., RawClient]) -> None:
    client = raw(key=None)
    error = client.events.wait_for("error", 1)[0]
    client.events.wait_for("disconnect", 1)
    assert error["error_code"] == "INVALID_API_KEY" and client.events["connected"] == []


def test_stream_shares_the_http_per_key_rate_limits(
    make_emulator: Callable[..., EmulatorProcess], raw: Callable[..., RawClient]
) -> None:
    emu = make_emulator(valence_limits=(100, 100, 100, 3))  # three requests a day
    client = raw(key=emu.valence_key, on=emu)  # request 1: the connection
    client.events.wait_for("connected", 1)
    client.send_pcm(speech_pcm(15.0, seed=5))  # windows 1 and 2 are requests 2 and 3
    predictions = client.events.wait_for("prediction", 2)
    error = client.events.wait_for("error", 1)[0]  # window 3 is refused and dropped
    assert error["error_code"] == "RATE_LIMITED" and error["retry_after"] >= 1
    assert client.sio.connected and len(predictions) == 2

    status = requests.get(
        f"{emu.base_url}/v1/rate-limit/status", headers={"x-api-key": emu.valence_key}, timeout=30
    ).json()
    assert (status["current_usage"]["day"], status["limits"]["day"]["remaining"]) == (3, 0)
    http = requests.post(
        f"{emu.base_url}/v1/discrete/emotion", headers={"x-api-key": emu.valence_key}, json={}, timeout=30
    )
    assert http.status_code == 429  # one budget for HTTP and streaming

    refused = raw(key=emu.valence_key, on=emu)
    assert refused.events.wait_for("error", 1)[0]["error_code"] == "RATE_LIMITED"
    refused.events.wait_for("disconnect", 1)
    wait_until(lambda: not refused.sio.connected, "the refused client is disconnected")
    assert refused.events["connected"] == []
    assert [e["kind"] for e in emu.ledger()["entries"]] == ["valence_stream"] * 2
