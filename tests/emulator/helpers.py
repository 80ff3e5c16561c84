"""Small helpers for the emulator tests: recordings and the raw async-upload protocol."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import requests
import soundfile as sf

from emulator.process import EmulatorProcess
from localstack.sample_data import write_audio

MIB = 1024 * 1024
PART = 5 * MIB


def wav(path: Path, seconds: float, *, samplerate: int = 16000, seed: int = 0, **kw: Any) -> Path:
    """A speech-like recording (modulated harmonics + noise) at `path`."""
    write_audio(path, seconds, samplerate=samplerate, seed=seed, **kw)
    return path


def tone_with_pause(path: Path, samplerate: int = 16000) -> Path:
    """2 s tone, 1 s silence, 2 s tone: two utterances."""
    t = np.arange(2 * samplerate) / samplerate
    tone = 0.3 * np.sin(2 * np.pi * 180 * t)
    sf.write(path, np.concatenate([tone, np.zeros(samplerate), tone]).astype(np.float32), samplerate)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def valence(emu: EmulatorProcess) -> dict[str, str]:
    return {"x-api-key": emu.valence_key}


def valsea(emu: EmulatorProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {emu.valsea_key}"}


def initiate(emu: EmulatorProcess, path: Path, part_size: int = PART, **params: Any) -> dict[str, Any]:
    parts = max(1, math.ceil(path.stat().st_size / part_size))
    resp = requests.post(
        f"{emu.base_url}/v1/asynch/emotion/upload/initiate",
        params={"file_name": path.name, "part_count": parts, **params},
        headers=valence(emu),
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def put_parts(urls: list[dict[str, Any]], path: Path, part_size: int = PART) -> list[dict[str, Any]]:
    parts = []
    with path.open("rb") as f:
        for item in urls:
            data = f.read(part_size)
            resp = requests.put(item["url"], data=data, timeout=60)
            assert resp.status_code == 200, resp.text
            parts.append({"ETag": resp.headers["ETag"], "PartNumber": item["part_number"]})
    return parts


def complete(emu: EmulatorProcess, init: dict[str, Any], parts: list[dict[str, Any]]) -> requests.Response:
    body = {"request_id": init["request_id"], "upload_id": init["upload_id"], "parts": parts}
    return requests.post(
        f"{emu.base_url}/v1/asynch/emotion/upload/complete", json=body, headers=valence(emu), timeout=120
    )


def upload(emu: EmulatorProcess, path: Path, part_size: int = PART, **params: Any) -> str:
    """initiate -> PUT parts -> complete; returns the request id."""
    init = initiate(emu, path, part_size, **params)
    resp = complete(emu, init, put_parts(init["presigned_urls"], path, part_size))
    assert resp.status_code == 200, resp.text
    return str(init["request_id"])


def status(emu: EmulatorProcess, request_id: str, **params: Any) -> requests.Response:
    return requests.get(
        f"{emu.base_url}/v1/asynch/emotion/status/{request_id}",
        params=params,
        headers=valence(emu),
        timeout=30,
    )


def submit_prosody(emu: EmulatorProcess, path: Path, **fields: str) -> requests.Response:
    data = {"model": "valsea-prosody", **fields}
    with path.open("rb") as f:
        return requests.post(
            f"{emu.base_url}/v1/prosody",
            files={"file": (path.name, f)},
            data=data,
            headers=valsea(emu),
            timeout=60,
        )
