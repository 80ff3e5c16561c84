"""In-process checks of the emulator's parts: fault specs and draws, the rate limiter, the
clock, the audio analysis and the CLI's configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from emulator import audio
from emulator.cli import build_config, register
from emulator.clock import EmulatedClock
from emulator.faults import FaultDecision, FaultInjector, FaultSpec
from emulator.ratelimit import RateLimiter
from tests.emulator.helpers import tone_with_pause, wav
from valence_client.models import VALENCE_MODELS


def test_fault_spec_round_trip_and_errors() -> None:
    spec = FaultSpec.parse("5xx=0.1, 429=0.05,drop=0.02,slow=0.05,slow_s=2,fail=0.1,parts=1")
    assert (spec.p_5xx, spec.p_429, spec.drop, spec.slow, spec.slow_s, spec.fail, spec.parts) == (
        0.1,
        0.05,
        0.02,
        0.05,
        2.0,
        0.1,
        True,
    )
    assert FaultSpec.parse(spec.to_text()) == spec
    assert FaultSpec.parse("") == FaultSpec() and FaultSpec().to_text() == ""
    for bad in ("5xx", "teapot=0.1", "5xx=1.5", "5xx=0.6,drop=0.6"):
        with pytest.raises(ValueError):
            FaultSpec.parse(bad)


def test_fault_draws_depend_on_seed_route_and_count_only() -> None:
    spec = FaultSpec.parse("5xx=0.3,429=0.3")

    def draws(seed: int, interleave: bool) -> list[object]:
        inj = FaultInjector(spec, seed)
        out: list[object] = []
        for _ in range(40):
            if interleave:
                inj.decide("GET other")
            out.append(inj.decide("POST complete").outcome)
        return out

    assert draws(1, False) == draws(1, True)  # other routes do not shift the sequence
    assert draws(1, False) != draws(2, False)
    assert FaultInjector(spec, 0).decide("PUT part", part=True).outcome is None  # parts need parts=1


def test_part_slow_delays_every_part_and_nothing_else() -> None:
    inj = FaultInjector(FaultSpec.parse("part_slow_s=1.5"), 0)
    assert [inj.decide("PUT part", part=True).delay_s for _ in range(5)] == [1.5] * 5
    assert inj.decide("POST /v1/prosody") == FaultDecision()
    both = FaultInjector(FaultSpec.parse("parts=1,slow=1,slow_s=2,part_slow_s=1.5"), 0)
    assert both.decide("PUT part", part=True).delay_s == 3.5


def test_rate_limiter_windows() -> None:
    now = [1_000_000.5]
    limiter = RateLimiter((2, 3, 100, 1000), clock=lambda: now[0])
    assert [limiter.admit("k").allowed for _ in range(3)] == [True, True, False]
    refused = limiter.admit("k")
    assert refused.retry_after == 1 and refused.headers()["Retry-After"] == "1"
    assert limiter.admit("other").allowed  # per key
    now[0] += 1
    ok = limiter.admit("k")
    assert ok.allowed and ok.headers()["X-RateLimit-Limit"] == "3"  # the minute binds now
    assert ok.headers()["X-RateLimit-Remaining"] == "0"
    minute_full = limiter.admit("k")
    assert not minute_full.allowed
    assert minute_full.retry_after == 1_000_020 - 1_000_001  # the next whole minute
    used = {w.name: w.used for w in limiter.peek("k")}
    assert used == {"second": 1, "minute": 3, "hour": 3, "day": 3}


def test_clock_scales_and_advances() -> None:
    real = [0.0]
    clock = EmulatedClock(60.0, monotonic=lambda: real[0])
    real[0] = 2.0
    assert clock.now() == 120.0
    assert clock.advance(30) == 150.0
    with pytest.raises(ValueError):
        clock.advance(-1)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_decodes_every_accepted_format(tmp_path: Path, fmt: str) -> None:
    path = wav(tmp_path / f"a.{fmt.lower()}", 12, samplerate=44100 if fmt != "MP3" else 16000, fmt=fmt)
    a = audio.analyse_file(path)
    assert a.duration_s == pytest.approx(12.0, abs=0.1)
    assert len(audio.timeline(a, "7emotions")) == 3  # 0-5, 5-10, 10-12


def test_predictions_are_scores_over_the_model(tmp_path: Path) -> None:
    a = audio.analyse_file(wav(tmp_path / "a.wav", 60.6, seed=5))
    segments = audio.timeline(a, "4emotions")
    assert len(segments) == 12  # the 0.6 s tail is dropped
    for seg in segments:
        assert seg.all_predictions is not None
        assert list(seg.all_predictions) == list(VALENCE_MODELS["4emotions"])
        assert sum(seg.all_predictions.values()) == pytest.approx(1.0, abs=1e-4)
        assert seg.confidence == max(seg.all_predictions.values())
    assert len({s.emotion for s in audio.timeline(a, "7emotions")}) > 1  # the audio moves, so do they
    again = audio.analyse_file(wav(tmp_path / "b.wav", 60.6, seed=5))
    assert audio.timeline(again, "4emotions") == segments


def test_silence_and_utterances(tmp_path: Path) -> None:
    a = audio.analyse_file(tone_with_pause(tmp_path / "p.wav"))
    assert audio.utterances(a) == [(0.0, 2.0), (3.0, 5.0)]
    assert len(audio.utterances(a, "word")) == 4  # at most 1 s each
    scores, raw = audio.prosody(a)
    assert scores.hesitation == pytest.approx(0.24, abs=0.02)  # 1 s of 5 s is a pause, x 1.2
    assert [u.text for u in raw] == ["utterance 1", "utterance 2"]
    silent = audio.analyse_samples(np.zeros(44100 * 5, dtype=np.float32), 44100)
    assert audio.utterances(silent) == [] and audio.discrete_result(silent, "4emotions").main_emotion


def test_undecodable_audio(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(audio.AudioDecodeError):
        audio.analyse_file(junk)
    with pytest.raises(audio.AudioDecodeError):
        audio.analyse_samples(np.array([np.nan] * 10), 44100)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["emulator", *argv])


def test_cli_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VALENCE_API_KEY", raising=False)
    monkeypatch.delenv("VALSEA_API_KEY", raising=False)
    monkeypatch.setenv("VALENCE_EMULATOR_FAULTS", "5xx=0.5")
    with pytest.raises(ValueError, match="no Valence key"):
        build_config(_args())
    with pytest.raises(SystemExit):  # keys are not accepted on the command line at all
        _args("--valence-key", "a")
    monkeypatch.setenv("VALENCE_API_KEY", "a, b")
    config = build_config(_args("--valence-limits", "1,2,3,4"))
    assert config.valence_keys == ("a", "b") and config.valsea_keys == ()
    assert config.valence_limits == (1, 2, 3, 4)
    assert config.faults.p_5xx == 0.5  # from the environment
    assert build_config(_args("--faults", "")).faults == FaultSpec()
    monkeypatch.setenv("VALENCE_API_KEY", "from-env")
    monkeypatch.setenv("VALSEA_API_KEY", "vs-env")
    assert build_config(_args()).valence_keys == ("from-env",)
    assert build_config(_args()).valsea_keys == ("vs-env",)
    with pytest.raises(ValueError):
        build_config(_args("--valence-limits", "1,2,3"))
