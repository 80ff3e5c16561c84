"""Helpers of the streaming tests: audio, an event recorder, the discrete reference, and a
proxy that stops reading (a server that accepts but no longer takes our bytes)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import requests
import soundfile as sf

from emulator.process import EmulatorProcess
from localstack.sample_data import speech_like_blocks
from valence_client.models import DiscreteResult

RATE = 44100
WAIT_S = 60.0
"""Upper bound for any wait on a live server: a hang fails the test, speed is never asserted."""


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def ws_url(emu: EmulatorProcess) -> str:
    return emu.base_url.replace("http://", "ws://")


def speech_pcm(seconds: float, *, samplerate: int = RATE, seed: int = 0) -> bytes:
    """Mono int16 little-endian PCM of a speech-like signal."""
    blocks = [b[:, 0] for b in speech_like_blocks(seconds, samplerate, 1, seed)]
    return (np.concatenate(blocks) * 32767).astype("<i2").tobytes()


def chunks(pcm: bytes, size: int = 8192) -> list[bytes]:
    """The SDK README's microphone loop reads 4096 frames (8192 bytes) at a time."""
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def discrete_of(
    emu: EmulatorProcess, pcm: bytes, *, samplerate: int = RATE, model: str = "4emotions"
) -> DiscreteResult:
    """The emulator's discrete (HTTP) answer for `pcm` sent as a 16-bit WAV: the reference a
    streaming prediction of the same 5 s must equal."""
    wav = io.BytesIO()
    sf.write(wav, np.frombuffer(pcm, dtype="<i2"), samplerate, format="WAV", subtype="PCM_16")
    resp = requests.post(
        f"{emu.base_url}/v1/discrete/emotion",
        params={"model": model},
        files={"file": ("window.wav", wav.getvalue(), "audio/wav")},
        headers={"x-api-key": emu.valence_key},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return DiscreteResult.model_validate(resp.json())


class Events:
    """Records callback arguments by kind; waits until enough arrived (callbacks come from
    other threads)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: dict[str, list[Any]] = defaultdict(list)

    def recorder(self, kind: str) -> Callable[..., None]:
        def record(data: Any = None) -> None:
            with self._cond:
                self.items[kind].append(data)
                self._cond.notify_all()

        return record

    def wait_for(self, kind: str, n: int, timeout: float = WAIT_S) -> list[Any]:
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.items[kind]) >= n, timeout)
            assert arrived, f"waited for {n} {kind!r} events; got {dict(self.items)}"
            return list(self.items[kind])

    def __getitem__(self, kind: str) -> list[Any]:
        with self._cond:
            return list(self.items[kind])


class StallingProxy:
    """Loopback TCP proxy to `target`. It forwards both ways until `stall_after` bytes have
    gone client -> server in total; from then on it stops reading from clients while keeping
    every connection open, so their writes pile up in kernel buffers and then block."""

    def __init__(self, target: tuple[str, int], stall_after: int) -> None:
        self.target = target
        self.stall_after = stall_after
        self.forwarded = 0
        self.stalled = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not (upstream and self.stalled.is_set()):
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if upstream:
                    self._count(len(data))
        except OSError:
            pass
        if upstream and self.stalled.is_set():
            self._closing.wait()  # never read again, never close: the "slow server"
        for s in (src, dst):
            s.close()

    def _count(self, n: int) -> None:
        with self._lock:
            self.forwarded += n
            if self.forwarded >= self.stall_after:
                self.stalled.set()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()
