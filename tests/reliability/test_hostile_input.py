"""Hostile input: every object ends rejected with a reason or processed correctly; nothing
escapes as an exception, nothing crashes a run, nothing is written outside the output root.

- Crafted objects in SeaweedFS through `run_preflight` (and, when accepted, the conversion the
  upload streams): zero bytes, noise named `.wav`, truncated headers, RIFF/data sizes larger
  than the file, 0 and 65,535 channels, sample rate 0, headers claiming 10 hours, 8-bit and
  32-bit float WAV (NaN samples too), 96 kHz.
- A bounded hypothesis fuzz of the same path (header fields and payloads drawn at random).
- Nasty keys (spaces, unicode, `..`-like segments, a 1,024-character key) through the whole
  nightly flow: processed, and the filesystem around the output root untouched.

Run on its own: `pytest tests/reliability/test_hostile_input.py -q -s` (prints its figures).
"""

from __future__ import annotations

import io
import os
import re
import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localstack.sample_data import SampleRecording, render
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import configure, statuses
from valence_pipeline.audio import WavStream, wav_size
from valence_pipeline.preflight import Preflight, run_preflight
from valence_pipeline.s3 import S3RangeReader, head_version
from valence_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
RATE = 16000


def wav(
    *,
    fmt: int = 1,
    channels: int = 1,
    rate: int = RATE,
    bits: int = 16,
    data: bytes | None = None,
    riff_size: int | None = None,
    data_size: int | None = None,
) -> bytes:
    """A WAV file written by hand, so every header field can lie."""
    if data is None:
        data = (np.sin(np.arange(RATE * 6) / 7) * 8000).astype("<i2").tobytes()
    align = (max(channels, 0) * bits // 8) & 0xFFFF
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        (36 + len(data) if riff_size is None else riff_size) & 0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        fmt & 0xFFFF,
        channels & 0xFFFF,
        rate & 0xFFFFFFFF,
        (rate * align) & 0xFFFFFFFF,
        align,
        bits & 0xFFFF,
        b"data",
        (len(data) if data_size is None else data_size) & 0xFFFFFFFF,
    )
    return header + data


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def flac_claiming(seconds: float) -> bytes:
    """A real 6 s FLAC whose STREAMINFO claims `seconds` of audio."""
    body = bytearray(encoded(np.sin(np.arange(RATE * 6) / 7) * 0.5, RATE, "FLAC"))
    total = int(seconds * RATE)
    body[8 + 13] = (body[8 + 13] & 0xF0) | ((total >> 32) & 0x0F)  # STREAMINFO total samples
    body[8 + 14 : 8 + 18] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(body)


TONE = np.sin(np.arange(RATE * 6) / 7) * 0.5
NOISE = np.random.default_rng(5).bytes(64 * 1024)


def flac_corrupt_midstream() -> bytes:
    """A real FLAC with noise over its middle: the headers are fine, the decoder loses sync."""
    body = bytearray(encoded(np.sin(np.arange(RATE * 30) / 7) * 0.5, RATE, "FLAC"))
    middle = len(body) // 2
    body[middle : middle + 4096] = NOISE[:4096]
    return bytes(body)


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    expect: str
    """'rejected:<code>' or 'accepted:<seconds>'."""


CASES = (
    Case("zero bytes", b"", "rejected:empty"),
    Case("random bytes named .wav", NOISE, "rejected:unreadable"),
    Case("RIFF magic then noise", b"RIFF" + NOISE, "rejected:unreadable"),
    Case("truncated header (30 bytes)", wav()[:30], "rejected:unreadable"),
    Case("header only, no data", wav()[:44], "rejected:unreadable"),
    Case("RIFF size larger than the file", wav(riff_size=2**31), "accepted:6"),
    Case("data size larger than the file", wav(data_size=2**31), "accepted:6"),
    Case("WAV header claiming 10 hours", wav(data_size=RATE * 2 * 36000), "accepted:6"),
    Case("FLAC header claiming 10 hours", flac_claiming(36000), "rejected:truncated"),
    Case("FLAC corrupt past its headers", flac_corrupt_midstream(), "rejected:undecodable"),
    Case("0 channels", wav(channels=0), "rejected:unreadable"),
    Case("65,535 channels", wav(channels=65535), "rejected:unreadable"),
    Case("sample rate 0", wav(rate=0), "rejected:unreadable"),
    Case("unknown format tag", wav(fmt=0x7777), "rejected:unreadable"),
    Case("8-bit PCM WAV", encoded(TONE, RATE, "WAV", "PCM_U8"), "accepted:6"),
    Case("32-bit float WAV", encoded(TONE, RATE, "WAV", "FLOAT"), "accepted:6"),
    Case(
        "32-bit float WAV of NaN and inf",
        encoded(np.tile([np.nan, np.inf, -np.inf], RATE * 2), RATE, "WAV", "FLOAT"),
        "accepted:6",
    ),
    Case(
        "96 kHz 24-bit WAV",
        encoded(np.sin(np.arange(96000 * 6) / 7) * 0.5, 96000, "WAV", "PCM_24"),
        "accepted:6",
    ),
    Case(
        "stereo 96 kHz float",
        encoded(np.stack([TONE.repeat(6)] * 2, axis=1), 96000, "WAV", "FLOAT"),
        "accepted:6",
    ),
)


def put_and_preflight(s3: Any, bucket: str, key: str, body: bytes) -> Preflight:
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return run_preflight(s3, head_version(s3, bucket, key), Settings())


def converted(s3: Any, verdict: Preflight) -> bytes:
    """The WAV the upload would stream for an accepted verdict (the downmix)."""
    assert verdict.info is not None
    return WavStream(lambda: S3RangeReader(s3, verdict.obj, window=256 * 1024), verdict.info).read()


def check_accepted(s3: Any, verdict: Preflight, body: bytes) -> None:
    """Accepted means processable: a sane description and an exact, decodable conversion whose
    samples are the source's (downmixed) samples."""
    info = verdict.info
    assert info is not None and verdict.route in {"discrete", "async"} and verdict.sha256
    assert info.samplerate > 0 and info.channels > 0 and info.frames > 0
    out = converted(s3, verdict)
    assert len(out) == wav_size(info)
    pcm, rate = sf.read(io.BytesIO(out), dtype="int16")
    assert rate == info.samplerate and len(pcm) == info.frames
    source, _ = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
    expected = np.clip(np.nan_to_num(source.mean(axis=1), nan=0.0, posinf=1.0, neginf=-1.0), -1, 1)
    expected = (expected[: info.frames] * 32767.0).astype("<i2")
    assert np.abs(pcm[: len(expected)].astype(int) - expected.astype(int)).max(initial=0) <= 1


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_crafted_object_is_rejected_with_a_reason_or_processed_correctly(
    s3_client: Any, bucket: str, case: Case
) -> None:
    verdict = put_and_preflight(s3_client, bucket, f"hostile/{uuid.uuid4().hex}.wav", case.body)
    outcome, _, detail = case.expect.partition(":")
    if outcome == "rejected":
        assert not verdict.accepted and verdict.reject_code == detail, verdict
        assert verdict.reason and verdict.reject_detail
    else:
        assert verdict.accepted, verdict.reason
        assert verdict.info is not None and abs(verdict.info.duration_s - float(detail)) < 0.1
        check_accepted(s3_client, verdict, case.body)
    print(f"\n{case.name}: {verdict.reason or f'accepted, {verdict.route}'}")


# --------------------------------------------------------------------------- fuzz

_FUZZ_TALLY: Counter[str] = Counter()

wav_fields = st.fixed_dictionaries(
    {
        "fmt": st.sampled_from([1, 3, 6, 7, 0xFFFE, 0, 0x7777]),
        "channels": st.one_of(st.integers(0, 4), st.integers(0, 65535)),
        "rate": st.one_of(st.sampled_from([0, 1, 8000, 16000, 96000, 192000]), st.integers(0, 2**32 - 1)),
        "bits": st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64, 65535]),
        "riff_size": st.one_of(st.none(), st.integers(0, 2**32 - 1)),
        "data_size": st.one_of(st.none(), st.integers(0, 2**32 - 1)),
        "data": st.binary(min_size=0, max_size=4096).map(lambda b: b * (1 + 80_000 // max(len(b), 1))),
    }
)


def mutated(body: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(body)
    for offset, value in edits:
        out[offset % min(len(out), 96)] = value
    return bytes(out)


VALID_BODIES = (
    wav(),
    wav(channels=2, rate=8000),
    encoded(TONE, RATE, "WAV", "FLOAT"),
    encoded(TONE, RATE, "WAV", "PCM_U8"),
    encoded(TONE, RATE, "FLAC"),
)
plausible_wav = st.builds(
    wav,
    fmt=st.sampled_from([1, 3]),
    channels=st.integers(1, 3),
    rate=st.sampled_from([8000, 16000, 44100, 96000]),
    bits=st.sampled_from([8, 16, 24, 32]),
    riff_size=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    data_size=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
fuzz_body = st.one_of(
    plausible_wav,
    st.builds(
        mutated,
        st.sampled_from(VALID_BODIES),
        st.lists(st.tuples(st.integers(0, 95), st.integers(0, 255)), max_size=4),
    ),
    wav_fields.map(lambda fields: wav(**fields)),
    st.tuples(wav_fields.map(lambda fields: wav(**fields)), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
    st.binary(min_size=0, max_size=2048),
    st.integers(1, 50_000).map(lambda seconds: flac_claiming(seconds)),
)


@settings(
    max_examples=int(os.environ.get("HOSTILE_FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(body=fuzz_body)
def test_fuzzed_objects_never_escape_preflight(s3_client: Any, bucket: str, body: bytes) -> None:
    verdict = put_and_preflight(s3_client, bucket, "fuzz/x.wav", body)  # raises -> the fuzz fails
    if verdict.accepted:
        check_accepted(s3_client, verdict, body)
        assert verdict.info is not None
        if verdict.info.format == "WAV" and verdict.info.subtype.startswith("PCM"):
            # A PCM frame count can never claim more samples than the object has bytes.
            assert verdict.info.frames * verdict.info.channels <= len(body)
        _FUZZ_TALLY["accepted"] += 1
    else:
        assert verdict.reject_code and verdict.reject_detail
        _FUZZ_TALLY[f"rejected:{verdict.reject_code}"] += 1


def test_fuzz_figures() -> None:
    """Prints what the fuzz above met (runs after it in file order)."""
    print(f"\nfuzzed objects: {sum(_FUZZ_TALLY.values())} -> {dict(sorted(_FUZZ_TALLY.items()))}")


# --------------------------------------------------------------------------- whole flow

NASTY_KEYS = (
    "in/with spaces and  double spaces.wav",
    "in/ünïcødé-通话-😀.wav",
    "in/ ../leading space dots.wav",
    "in/..x/x../.../dots.wav",
    "in/%2e%2e/%2e%2e/encoded-dots.wav",
    "in/semi;colon&amp=equals?query#hash.wav",
    "in/" + "/".join(["y" * 200] * 4) + "/" + "z" * 213 + ".wav",  # 1,024 characters: S3's limit
)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_store_refuses_exact_dot_dot_segments(s3_client: Any, bucket: str) -> None:
    """SeaweedFS refuses keys with a `..` or `.` segment (so the flow test cannot hold them);
    the pipeline never turns a key into a local path either way (the flow test checks that)."""
    from botocore.exceptions import ClientError

    for key in ("in/../escape.wav", "in/a/../../b.wav", "in/./x.wav"):
        with pytest.raises(ClientError):
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")


def test_nasty_keys_are_processed_and_nothing_is_written_outside_the_output_root(
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    from flows.ingest import nightly_ingest, run_to_result
    from valence_pipeline.runtime import reset_runtime

    assert len(NASTY_KEYS[-1].encode()) == 1024
    bodies = {key: render(SampleRecording(key, 6 + i), seed=i) for i, key in enumerate(NASTY_KEYS)}
    bodies["in/empty.wav"] = b""
    bodies["in/noise.wav"] = NOISE
    for key, body in bodies.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    work = tmp_path / "work"
    out = work / "dataset"
    work.mkdir()
    (work / "neighbour.txt").write_text("untouched")
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, out)
    around = {"work": tree(work), "tmp": set(os.listdir(tmp_path)), "repo": set(os.listdir(REPO))}
    home = Path.home()
    home_before = set(os.listdir(home))

    reset_runtime()
    result = run_to_result(nightly_ingest, source=f"s3://{bucket}/in/", trigger="manual")

    final = statuses(database_url)
    assert {k: s for k, (s, _) in final.items() if k in NASTY_KEYS} == dict.fromkeys(NASTY_KEYS, "completed")
    assert final["in/empty.wav"][0] == "rejected" and final["in/noise.wav"][0] == "rejected"
    assert result["completed"] == len(NASTY_KEYS) and result["failed"] == 0
    # Writes stayed inside the output root (and the database file the test chose).
    new_in_work = tree(work) - around["work"]
    assert new_in_work and all(p == "dataset" or p.startswith("dataset/") for p in new_in_work), new_in_work
    assert (work / "neighbour.txt").read_text() == "untouched"
    assert set(os.listdir(tmp_path)) - around["tmp"] <= {"results.db", "results.db-wal", "results.db-shm"}
    assert set(os.listdir(REPO)) == around["repo"]
    assert set(os.listdir(home)) == home_before
    # Dataset paths are partitions and generated file names: no part of any key. The night's
    # pictures (`pictures/<date>/`) carry a sanitised stem of the key, so an analyst finds a
    # call's picture by its name: one level deep, [A-Za-z0-9._-] only, never a path of its own.
    pictures = {p for p in tree(out) if p == "pictures" or p.startswith("pictures/")}
    picture = re.compile(r"pictures(/\d{4}-\d{2}-\d{2}(/(distribution|\d+-[A-Za-z0-9._-]+)\.png)?)?")
    assert all(picture.fullmatch(p) for p in pictures), pictures
    names = {part for path in tree(out) - pictures for part in Path(path).parts}
    assert all(
        part.startswith(("processing_date=", "provider="))
        or "." in part
        or part.isidentifier()
        or part.startswith("_")
        for part in names
    )
    fragments = ("spaces", "ünïcødé", "dots", "yyyy", "colon", "escape")
    assert not [p for p in tree(out) - pictures if any(f in p for f in fragments)]
    print(
        f"\nnasty keys: {len(NASTY_KEYS)} completed, 2 rejected; {len(tree(out))} dataset paths, all under the root"
    )
