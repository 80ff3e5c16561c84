"""Emulator behaviour over real HTTP (requests against a child process)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import soundfile as sf

from emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    MIB,
    complete,
    initiate,
    put_parts,
    sha256,
    status,
    submit_prosody,
    tone_with_pause,
    upload,
    valence,
    valsea,
    wav,
)
from valence_client.models import (
    PROSODY_EXPRESSIONS,
    AsyncStatus,
    DiscreteResult,
    ProsodyJob,
    ProsodyResult,
)

MakeEmulator = Callable[..., EmulatorProcess]


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """Emulated time stands (almost) still; tests move it with `advance_clock`."""
    workdir = tmp_path_factory.mktemp("frozen")
    with EmulatorProcess(
        time_scale=1e-6,
        valence_limits="1000,10000,100000,1000000",
        valsea_limits="1000,10000,100000,1000000",
        log_path=workdir / "emulator.log",
        data_dir=workdir / "data",
    ) as proc:
        yield proc


@pytest.fixture
def still(frozen: EmulatorProcess) -> EmulatorProcess:
    frozen.reset()
    return frozen


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "6s": wav(d / "six.wav", 6, samplerate=44100, seed=1),
        "6s-other": wav(d / "six-other.wav", 6, samplerate=44100, seed=9),
        "12s": wav(d / "twelve.wav", 12),
        "3s": wav(d / "three.wav", 3),
        "30s": wav(d / "thirty.wav", 30, seed=3),
        "90s": wav(d / "ninety.wav", 90, seed=4),
    }


def _get(emu: EmulatorProcess, path: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(f"{emu.base_url}{path}", headers=headers or {}, timeout=30)


def _discrete(emu: EmulatorProcess, path: Path, model: str = "4emotions") -> requests.Response:
    with path.open("rb") as f:
        return requests.post(
            f"{emu.base_url}/v1/discrete/emotion",
            params={"model": model},
            files={"file": f},
            headers=valence(emu),
            timeout=30,
        )


# --------------------------------------------------------------------------- start-up, auth


def test_starts_within_five_seconds(make_emulator: MakeEmulator) -> None:
    started = time.monotonic()
    emu = make_emulator()
    assert time.monotonic() - started < 5.0
    assert emu.base_url.startswith("http://127.0.0.1:")
    assert _get(emu, "/health").json()["status"] == "ok"


def test_auth(emu: EmulatorProcess) -> None:
    for headers in ({}, {"x-api-key": "wrong"}, valsea(emu)):
        resp = _get(emu, "/v1/rate-limit/status", headers)
        assert resp.status_code == 401 and "error" in resp.json()
    assert _get(emu, "/v1/rate-limit/status", valence(emu)).status_code == 200

    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": emu.valsea_key or ""},
        valence(emu),
    ):
        resp = _get(emu, "/v1/prosody/nope", headers)
        assert resp.status_code == 401 and "error" in resp.json()
    assert _get(emu, "/v1/prosody/nope", valsea(emu)).status_code == 404
    # The admin surface needs no key.
    assert _get(emu, "/_emulator/ledger").status_code == 200


def test_valsea_without_key_is_not_configured(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(valsea_enabled=False)
    resp = requests.post(f"{emu.base_url}/v1/prosody", headers={"Authorization": "Bearer x"}, timeout=10)
    assert resp.status_code == 503 and resp.json()["error"] == "service not configured"


# --------------------------------------------------------------------------- discrete


def test_discrete_validation(emu: EmulatorProcess, clips: dict[str, Path], tmp_path: Path) -> None:
    too_long = _discrete(emu, clips["12s"]).json()
    assert too_long["error_code"] == "AUDIO_TOO_LONG"
    assert too_long["max_duration_seconds"] == 10.0 and too_long["actual_duration_seconds"] == 12.0

    big = wav(tmp_path / "big.wav", 40, samplerate=44100, channels=2)  # ~7 MB, 40 s
    resp = _discrete(emu, big)
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "FILE_TOO_LARGE"
    assert resp.json()["actual_duration_seconds"] == 40.0

    assert _discrete(emu, clips["6s"], model="9emotions").status_code == 400
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + bytes(range(256)) * 100)
    assert _discrete(emu, garbage).json()["error_code"] == "INVALID_AUDIO"
    assert emu.ledger()["entries"] == []


def test_discrete_json_payload_quick_start_style(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    samples, _ = sf.read(clips["6s"], dtype="float32")
    event = {"payload": [samples[:198450].tolist()]}  # 4.5 s at 44.1 kHz, as in the quick start
    url = f"{emu.base_url}/v1/discrete/emotion"
    # The quick start posts json=json.dumps(event): a JSON string holding the JSON.
    quoted = requests.post(url, json=json.dumps(event), headers=valence(emu), timeout=30)
    plain = requests.post(url, json=event, headers=valence(emu), timeout=30)
    assert quoted.status_code == plain.status_code == 200
    assert DiscreteResult.model_validate(quoted.json()) == DiscreteResult.model_validate(plain.json())

    legacy = requests.post(f"{emu.base_url}/emotionprediction", json=event, headers=valence(emu), timeout=30)
    assert legacy.json() == plain.json()  # the quick start's API_LINK path

    at_16k = requests.post(url, json={**event, "sample_rate": 16000}, headers=valence(emu), timeout=30)
    assert at_16k.status_code == 400  # 198450 samples at 16 kHz are 12.4 s
    assert at_16k.json()["error_code"] == "AUDIO_TOO_LONG"


def test_predictions_are_deterministic(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    first, second = _discrete(emu, clips["6s"]).json(), _discrete(emu, clips["6s"]).json()
    assert first == second
    assert _discrete(emu, clips["6s-other"]).json() != first

    ids = [upload(emu, clips["90s"]) for _ in range(2)]
    emu.advance_clock(3600)  # done by now, however busy the machine (no reliance on real time)
    timelines = [status(emu, i, comprehensive_output="true").json()["emotions"] for i in ids]
    assert timelines[0] == timelines[1] and len(timelines[0]) == 18

    # Paying twice for the same audio is visible in the ledger.
    by_sha = emu.ledger()["by_sha256"]
    assert by_sha[sha256(clips["6s"])] == {"valence_discrete": 2, "total": 2}
    assert by_sha[sha256(clips["90s"])] == {"valence_async": 2, "total": 2}


def test_other_shapes(make_emulator: MakeEmulator, clips: dict[str, Path]) -> None:
    emu = make_emulator(timeline_shape="002", discrete_shape="000", time_scale=3600)
    discrete = _discrete(emu, clips["6s"]).json()
    assert set(discrete) == {"emotions", "dominant_emotion"}
    assert DiscreteResult.model_validate(discrete).main_emotion == discrete["dominant_emotion"]

    request_id = upload(emu, clips["30s"])
    emu.advance_clock(3600)  # done by now, however busy the machine (no reliance on real time)
    body = status(emu, request_id).json()
    assert body["emotions"][1] == {
        "t": "00:05",
        "emotion": body["emotions"][1]["emotion"],
        **{"confidence": body["emotions"][1]["confidence"]},
    }
    segments = AsyncStatus.model_validate(body).emotions
    assert [s.start_s for s in segments] == [0, 5, 10, 15, 20, 25]


# --------------------------------------------------------------------------- async upload


def test_part_urls_are_signed(
    make_emulator: MakeEmulator, emu: EmulatorProcess, clips: dict[str, Path]
) -> None:
    init = initiate(emu, clips["30s"])
    url = init["presigned_urls"][0]["url"]
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"expires", "signature"}
    data = clips["30s"].read_bytes()

    tampered = [
        url.replace(query["signature"][0], "0" * 64),
        url.replace(f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 60}"),
        url.replace("/1?", "/2?"),
    ]
    for bad in tampered:
        resp = requests.put(bad, data=data, timeout=30)
        assert resp.status_code == 403, bad
        assert "<Code>SignatureDoesNotMatch</Code>" in resp.text

    good = requests.put(url, data=data, timeout=30)
    assert good.status_code == 200
    assert good.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - S3's ETag

    expired = make_emulator(url_expiry_s=0)
    stale = initiate(expired, clips["30s"])["presigned_urls"][0]["url"]
    resp = requests.put(stale, data=data, timeout=30)
    assert resp.status_code == 403 and "<Code>AccessDenied</Code>" in resp.text


def test_complete_checks_parts_before_changing_anything(emu: EmulatorProcess, tmp_path: Path) -> None:
    recording = wav(tmp_path / "eleven-mib.wav", 360)  # ~11 MiB: parts of 5, 5 and ~1 MiB
    init = initiate(emu, recording)
    parts = put_parts(init["presigned_urls"], recording)
    assert len(parts) == 3

    wrong_etag = [parts[0], {**parts[1], "ETag": '"' + "0" * 32 + '"'}, parts[2]]
    missing = [*parts[:2], {"ETag": parts[2]["ETag"], "PartNumber": 4}]
    unordered = [parts[1], parts[0], parts[2]]
    for bad, code in (
        (wrong_etag, "INVALID_PART"),
        (missing, "INVALID_PART"),
        (unordered, "INVALID_PART_ORDER"),
    ):
        resp = complete(emu, init, bad)
        assert resp.status_code == 400 and resp.json()["error_code"] == code
    assert status(emu, init["request_id"]).json()["status"] == "initiated"

    ok = complete(emu, init, parts)
    assert ok.status_code == 200
    again = complete(emu, init, parts)  # a retried complete: same answer, not billed again
    assert again.status_code == 200
    assert len(emu.ledger()["entries"]) == 1


def test_small_parts_are_refused_like_s3(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    init = initiate(emu, clips["90s"], part_size=MIB)
    resp = complete(emu, init, put_parts(init["presigned_urls"], clips["90s"], MIB))
    assert resp.status_code == 400 and resp.json()["error_code"] == "ENTITY_TOO_SMALL"


def test_complete_validates_the_audio(emu: EmulatorProcess, clips: dict[str, Path], tmp_path: Path) -> None:
    init = initiate(emu, clips["3s"])
    parts = put_parts(init["presigned_urls"], clips["3s"])
    short = complete(emu, init, parts)
    assert short.status_code == 400
    assert short.json() | {"error": ""} == {
        "error": "",
        "error_code": "AUDIO_TOO_SHORT",
        "min_duration_seconds": 5.0,
        "actual_duration_seconds": 3.0,
    }
    assert complete(emu, init, parts).json() == short.json()  # the same answer on a retry
    assert status(emu, init["request_id"]).json()["status"] == "failed"

    noise = tmp_path / "noise.wav"
    noise.write_bytes(bytes(range(256)) * 400)
    init = initiate(emu, noise)
    resp = complete(emu, init, put_parts(init["presigned_urls"], noise))
    assert resp.status_code == 400 and resp.json()["error_code"] == "INVALID_AUDIO"
    assert emu.ledger()["entries"] == []


def test_async_lifecycle_follows_the_emulated_clock(still: EmulatorProcess, clips: dict[str, Path]) -> None:
    init = initiate(still, clips["90s"])
    request_id = init["request_id"]
    assert status(still, request_id).json()["status"] == "initiated"
    assert complete(still, init, put_parts(init["presigned_urls"], clips["90s"])).status_code == 200
    assert status(still, request_id).json() == {"request_id": request_id, "status": "upload_completed"}
    still.advance_clock(10)  # the background processor polls every 10 s: it has picked it up
    assert status(still, request_id).json()["status"] == "processing"
    still.advance_clock(5)  # 2 s overhead + 90 s per audio hour (here 2.25 s) after the pickup
    plain = AsyncStatus.model_validate(status(still, request_id).json())
    assert plain.status == "completed" and len(plain.emotions) == 18
    assert all(s.all_predictions is None for s in plain.emotions)
    full = AsyncStatus.model_validate(status(still, request_id, comprehensive_output="true").json())
    assert all(s.all_predictions and s.emotion == max(s.all_predictions, key=s.all_predictions.__getitem__)
               for s in full.emotions)  # fmt: skip

    still.advance_clock(24 * 3600 - 60)
    assert status(still, request_id).status_code == 200
    still.advance_clock(120)  # results are kept 24 h
    assert status(still, request_id).status_code == 404
    assert status(still, "no-such-request").status_code == 404


def test_s3_backed_uploads_use_real_presigned_urls(
    make_emulator: MakeEmulator, seaweedfs: Any, s3_client: Any, tmp_path: Path
) -> None:
    bucket = f"emu-{int(time.time() * 1000)}"
    emu = make_emulator(
        time_scale=3600, s3_endpoint=seaweedfs.endpoint_url, s3_bucket=bucket, env=seaweedfs.env()
    )
    recording = wav(tmp_path / "s3.wav", 200)  # ~6.1 MiB: two parts
    init = initiate(emu, recording)
    urls = [u["url"] for u in init["presigned_urls"]]
    assert all(u.startswith(seaweedfs.endpoint_url) and "X-Amz-Signature=" in u for u in urls)

    forged = urls[0].replace("X-Amz-Signature=", "X-Amz-Signature=00")
    assert requests.put(forged, data=b"x" * 10, timeout=30).status_code == 403

    parts = put_parts(init["presigned_urls"], recording)
    assert complete(emu, init, parts).status_code == 200
    emu.advance_clock(3600)  # done by now, however busy the machine (no reliance on real time)
    body = status(emu, init["request_id"]).json()
    assert body["status"] == "completed" and len(body["emotions"]) == 40

    key = s3_client.list_objects_v2(Bucket=bucket)["Contents"][0]["Key"]
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == recording.read_bytes()
    assert emu.ledger()["entries"][0]["sha256"] == sha256(recording)


# --------------------------------------------------------------------------- Valsea


def test_valsea_lifecycle(still: EmulatorProcess, clips: dict[str, Path], tmp_path: Path) -> None:
    resp = submit_prosody(still, clips["30s"], response_format="verbose_json")
    assert resp.status_code == 202
    job = ProsodyJob.model_validate(resp.json())
    assert job.status == "queued"
    result_url = f"/v1/prosody/{job.job_id}/result"

    assert _get(still, result_url, valsea(still)).status_code == 409
    still.advance_clock(2)
    assert _get(still, f"/v1/prosody/{job.job_id}", valsea(still)).json()["status"] == "in_progress"
    assert _get(still, result_url, valsea(still)).status_code == 409
    still.advance_clock(5)  # 3 s + 0.05 s per audio second
    assert _get(still, f"/v1/prosody/{job.job_id}", valsea(still)).json() == {
        "job_id": job.job_id,
        "status": "completed",
    }
    result = ProsodyResult.model_validate(_get(still, result_url, valsea(still)).json())
    assert all(0.0 <= v <= 1.0 for v in result.emotions.model_dump().values())
    assert result.raw_predictions and result.raw_predictions[0].text == "utterance 1"
    wire = _get(still, result_url, valsea(still)).json()["raw_predictions"][0]["emotions"]
    assert [e["name"] for e in wire] == list(PROSODY_EXPRESSIONS)

    still.advance_clock(24 * 3600)
    assert _get(still, result_url, valsea(still)).status_code == 404

    # Utterances split at pauses; plain json has no raw predictions; the same audio, the same scores.
    pauses = tone_with_pause(tmp_path / "pause.wav")
    ids = [
        submit_prosody(still, pauses, response_format=f).json()["job_id"] for f in ("verbose_json", "json")
    ]
    still.advance_clock(60)
    verbose, plain = (_get(still, f"/v1/prosody/{i}/result", valsea(still)).json() for i in ids)
    assert [(u["time"]["begin"], u["time"]["end"]) for u in verbose["raw_predictions"]] == [
        (0.0, 2.0),
        (3.0, 5.0),
    ]
    assert "raw_predictions" not in plain and plain["emotions"] == verbose["emotions"]


def test_valsea_validation_and_credits(still: EmulatorProcess, clips: dict[str, Path]) -> None:
    assert submit_prosody(still, clips["30s"], model="whisper").status_code == 400
    assert submit_prosody(still, clips["30s"], granularity="paragraph").status_code == 400
    assert submit_prosody(still, clips["30s"], response_format="xml").status_code == 400

    still.set_credits(1)
    resp = submit_prosody(still, clips["90s"])  # 1.5 min costs 2 credits
    assert resp.status_code == 402
    ledger = still.ledger()
    assert ledger["entries"] == [] and ledger["valsea_credits_remaining"] == 1
    assert submit_prosody(still, clips["30s"]).status_code == 202
    assert still.ledger()["valsea_credits_remaining"] == 0
    assert submit_prosody(still, clips["30s"]).status_code == 402


# --------------------------------------------------------------------------- rate limits


def test_rate_limits_answer_429_with_headers(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(valence_limits="100,100,3,10000", valsea_limits="100,100,2,10000")
    for i in range(3):
        ok = _get(emu, "/v1/asynch/emotion/status/x", valence(emu))
        assert ok.status_code == 404  # counted, even though the id is unknown
        assert ok.headers["X-RateLimit-Limit"] == "3"
        assert ok.headers["X-RateLimit-Remaining"] == str(2 - i)
    limited = _get(emu, "/v1/asynch/emotion/status/x", valence(emu))
    assert limited.status_code == 429
    reset = int(limited.headers["X-RateLimit-Reset"])
    assert reset % 3600 == 0 and 0 < reset - time.time() <= 3600
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert limited.headers["X-RateLimit-Remaining"] == "0"

    status_body = _get(emu, "/v1/rate-limit/status", valence(emu)).json()
    usage = status_body["current_usage"]  # the refused 4th request is not counted
    assert (usage["hour"], usage["day"]) == (3, 3) and usage["minute"] <= 3 and usage["second"] <= 3
    assert status_body["limits"]["hour"] == {"limit": 3, "remaining": 0, "reset": reset}

    # Valsea has its own counters.
    assert _get(emu, "/v1/prosody/x", valsea(emu)).status_code == 404
    assert _get(emu, "/v1/prosody/x", valsea(emu)).status_code == 404
    assert _get(emu, "/v1/prosody/x", valsea(emu)).status_code == 429


# --------------------------------------------------------------------------- faults


def _outcome(emu: EmulatorProcess) -> int | str:
    try:
        return _get(emu, "/v1/rate-limit/health", valence(emu)).status_code
    except requests.ConnectionError:
        return "dropped"


def test_seeded_faults_replay_identically(emu: EmulatorProcess) -> None:
    spec = "5xx=0.3,429=0.2,drop=0.2"
    runs = []
    for _ in range(2):
        emu.set_faults(spec)  # restarts the seeded draws
        runs.append([_outcome(emu) for _ in range(30)])
    assert runs[0] == runs[1]
    assert {"dropped", 200, 429} <= set(runs[0]) and {500, 502, 503} & set(runs[0])
    log = emu.requests_log()
    assert [r["fault"] for r in log[:30]] == [r["fault"] for r in log[30:60]]


def test_injected_429_carries_retry_after(emu: EmulatorProcess) -> None:
    emu.set_faults("429=1,retry_after=3")
    resp = _get(emu, "/v1/rate-limit/health", valence(emu))
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"


def test_5xx_and_drop_happen_before_any_state_change(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    init = initiate(emu, clips["30s"])
    parts = put_parts(init["presigned_urls"], clips["30s"])
    emu.set_faults("5xx=1")
    assert complete(emu, init, parts).status_code in {500, 502, 503}
    emu.set_faults("drop=1")
    with pytest.raises(requests.ConnectionError):
        complete(emu, init, parts)
    emu.set_faults("")
    assert status(emu, init["request_id"]).json()["status"] == "initiated"
    assert complete(emu, init, parts).status_code == 200
    assert len(emu.ledger()["entries"]) == 1


def test_lost_answer_keeps_the_effect(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    emu.set_faults("lost=1")
    with pytest.raises(requests.ConnectionError):
        _discrete(emu, clips["6s"])
    assert [e["kind"] for e in emu.ledger()["entries"]] == ["valence_discrete"]
    assert emu.requests_log()[-1]["status"] == 200 and emu.requests_log()[-1]["fault"] == "lost"


def test_part_faults_only_when_asked(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    init = initiate(emu, clips["30s"])
    url = init["presigned_urls"][0]["url"]
    data = clips["30s"].read_bytes()
    emu.set_faults("5xx=1")
    assert requests.put(url, data=data, timeout=30).status_code == 200
    emu.set_faults("5xx=1,parts=1")
    assert requests.put(url, data=data, timeout=30).status_code in {500, 502, 503}


def test_slow_and_failed_jobs(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    emu.set_faults("slow=1,slow_s=0.4")
    started = time.monotonic()
    assert _get(emu, "/v1/rate-limit/health", valence(emu)).status_code == 200
    assert time.monotonic() - started >= 0.4

    emu.set_faults("fail=1")
    request_id = upload(emu, clips["30s"])
    job_id = submit_prosody(emu, clips["30s"]).json()["job_id"]
    emu.advance_clock(3600)  # both are done by now, however busy the machine
    assert status(emu, request_id).json()["status"] == "failed"
    assert _get(emu, f"/v1/prosody/{job_id}", valsea(emu)).json()["status"] == "failed"
    assert _get(emu, f"/v1/prosody/{job_id}/result", valsea(emu)).status_code == 409


# --------------------------------------------------------------------------- admin, secrets


def test_ledger_and_request_log_hide_secrets(emu: EmulatorProcess, clips: dict[str, Path]) -> None:
    upload(emu, clips["30s"])
    submit_prosody(emu, clips["30s"])
    _discrete(emu, clips["6s"])
    _get(emu, "/v1/asynch/emotion/status/x", {**valence(emu), "Idempotency-Key": "op-1"})
    ledger = emu.ledger()
    assert [e["kind"] for e in ledger["entries"]] == ["valence_async", "valsea_job", "valence_discrete"]
    assert ledger["by_sha256"][sha256(clips["30s"])] == {"valence_async": 1, "valsea_job": 1, "total": 2}
    assert ledger["entries"][1]["credits"] == 1 and ledger["entries"][0]["duration_s"] == 30.0

    log = emu.requests_log()
    text = json.dumps(log) + json.dumps(ledger) + emu.log_tail(1000)
    assert emu.valence_key not in text and str(emu.valsea_key) not in text
    part = next(r for r in log if r["route"] == "part")
    assert "signature=[REDACTED]" in part["query"]
    assert {r["key"] for r in log if r["provider"] == "valence"} == {log[0]["key"]}
    assert log[0]["key"].startswith("key-")
    assert log[-1]["idempotency_key"] == "op-1" and log[-1]["status"] == 404

    emu.reset()
    assert emu.ledger()["entries"] == [] and emu.requests_log() == []
