"""Audio decoding and the emulator's stand-in predictions.

THIS IS NOT AN EMOTION MODEL. The emulator only has to answer in the providers' shapes, with
values that are deterministic (same audio -> same answer) and that move when the audio
moves, so that tests, benchmarks and the demo see realistic variety. Nothing here says
anything about how a speaker feels.

How the numbers are made:

1. The file is decoded in blocks (soundfile: WAV, FLAC, OGG, MP3, ...), downmixed to mono and
   cut into 50 ms frames; per frame we keep only the RMS energy and the zero-crossing rate
   (a crude pitch/brightness estimate). Memory is two floats per frame, whatever the size of
   the file.
2. A stretch of audio (a 5 s segment, a discrete clip, an utterance) becomes three numbers in
   [0, 1]: loudness (RMS in dBFS mapped from -60..-10), pitch (zero crossings per second of the
   voiced frames / 3000) and liveliness (spread of the voiced frames' loudness).
3. Valence: each emotion has a fixed prototype point in that space; the scores are a softmax
   of the negative squared distances, the main emotion is the argmax.
4. Valsea: each of the 48 expressions is a logistic function of the features with weights
   derived from the SHA-256 of its name; the five summary metrics are simple blends of
   loudness, pitch, liveliness, pauses and utterance rate.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf

from valence_client.models import (
    PROSODY_EXPRESSIONS,
    SEGMENT_SECONDS,
    VALENCE_MODELS,
    DiscreteResult,
    EmotionSegment,
    ProsodyScores,
    ProsodyUtterance,
)

FRAME_S = 0.05
FRAMES_PER_BLOCK = 256
SILENCE_FLOOR_DB = -50.0
"""Frames quieter than this (dBFS) are always silence; the threshold rises above the noise
floor of noisy recordings (see `silence_threshold`)."""
MIN_TAIL_S = 1.0
"""A last async segment shorter than this is dropped (one entry per 5 s of audio)."""

Source = str | Path | IO[bytes]


class AudioDecodeError(Exception):
    """The bytes are not audio soundfile can decode."""


@dataclass(frozen=True)
class Analysis:
    """Frame features of one recording (mono mix)."""

    duration_s: float
    samplerate: int
    channels: int
    format: str
    frame_s: float
    rms: np.ndarray
    zcr: np.ndarray
    """Low-passed zero crossings per second, per frame."""
    silence_db: float
    """Frames at or below this loudness (dBFS) are pauses."""

    @property
    def db(self) -> np.ndarray:
        return 20 * np.log10(np.maximum(self.rms, 1e-10))


def silence_threshold(rms: np.ndarray) -> float:
    """10 dB above the noise floor (10th percentile), but never above the loud frames minus
    15 dB (so a steady tone still counts as voiced) nor below -50 dBFS."""
    if len(rms) == 0:
        return SILENCE_FLOOR_DB
    db = 20 * np.log10(np.maximum(rms, 1e-10))
    floor, loud = np.percentile(db, [10, 95])
    return float(max(SILENCE_FLOOR_DB, min(floor + 10.0, loud - 15.0)))


def _smooth(mono: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` samples (a ~1 kHz low-pass: keeps the voice, drops hiss)."""
    if width <= 1 or len(mono) == 0:
        return mono
    padded = np.concatenate([np.full(width, mono[0], dtype=np.float64), mono.astype(np.float64)])
    c = np.cumsum(padded)
    return (c[width:] - c[:-width]) / width


def _frame_features(mono: np.ndarray, frame_len: int, samplerate: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of `frame_len` samples (a last short frame included): RMS, and crossings per
    second of the low-passed signal (about twice the fundamental for a voiced frame)."""
    if len(mono) == 0:
        return np.zeros(0), np.zeros(0)
    starts = np.arange(0, len(mono), frame_len)
    sizes = np.diff(np.append(starts, len(mono)))
    rms = np.sqrt(np.add.reduceat(np.square(mono, dtype=np.float64), starts) / sizes)
    lp = _smooth(mono, round(samplerate / 1000))
    flips = np.append(np.signbit(lp[1:]) != np.signbit(lp[:-1]), False)
    zcr = np.add.reduceat(flips, starts) * (samplerate / sizes)
    return rms, zcr


def analyse_file(source: Source) -> Analysis:
    """Decode `source` block by block (bounded memory) and return its frame features."""
    try:
        handle = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(str(exc).rsplit(": ", 1)[-1]) from exc
    with handle as f:
        samplerate, channels, fmt = f.samplerate, f.channels, f.format
        if samplerate <= 0:
            raise AudioDecodeError("no sample rate")
        frame_len = max(1, round(samplerate * FRAME_S))
        rms_parts, zcr_parts, total = [], [], 0
        try:
            for block in f.blocks(blocksize=frame_len * FRAMES_PER_BLOCK, dtype="float32", always_2d=True):
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                total += len(mono)
                rms, zcr = _frame_features(mono, frame_len, samplerate)
                rms_parts.append(rms)
                zcr_parts.append(zcr)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioDecodeError(f"decoding failed after {total} frames: {exc}") from exc
    rms = np.concatenate(rms_parts) if rms_parts else np.zeros(0)
    zcr = np.concatenate(zcr_parts) if zcr_parts else np.zeros(0)
    return Analysis(
        total / samplerate,
        samplerate,
        channels,
        fmt,
        frame_len / samplerate,
        rms,
        zcr,
        silence_threshold(rms),
    )


def analyse_samples(samples: np.ndarray, samplerate: int) -> Analysis:
    """Frame features of in-memory mono samples (the discrete API's JSON payload)."""
    if samplerate <= 0:
        raise AudioDecodeError("sample_rate must be positive")
    mono = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError("payload holds NaN or infinite samples")
    frame_len = max(1, round(samplerate * FRAME_S))
    rms, zcr = _frame_features(mono, frame_len, samplerate)
    return Analysis(
        len(mono) / samplerate, samplerate, 1, "RAW", frame_len / samplerate, rms, zcr, silence_threshold(rms)
    )


def probe_duration(source: Source) -> float | None:
    """Duration from the header only (for answers about files too big to decode); None if unknown."""
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return info.frames / info.samplerate if info.samplerate else None


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Features:
    loudness: float
    pitch: float
    liveliness: float
    voiced: float
    """Fraction of frames above the silence threshold."""

    def vector(self) -> np.ndarray:
        return np.array([self.loudness, self.pitch, self.liveliness, self.voiced])


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def features(a: Analysis, start_s: float = 0.0, end_s: float | None = None) -> Features:
    """The stand-in features of the audio between `start_s` and `end_s`."""
    lo = int(start_s / a.frame_s)
    hi = len(a.rms) if end_s is None else max(lo + 1, math.ceil(end_s / a.frame_s - 1e-9))
    rms, zcr = a.rms[lo:hi], a.zcr[lo:hi]
    if len(rms) == 0:
        return Features(0.0, 0.0, 0.0, 0.0)
    db = 20 * np.log10(np.maximum(rms, 1e-10))
    voiced = db > a.silence_db
    total_db = 20 * math.log10(max(math.sqrt(float(np.mean(np.square(rms)))), 1e-10))
    if not voiced.any():
        return Features(_clip01((total_db + 40.0) / 30.0), 0.0, 0.0, 0.0)
    voiced_db = db[voiced]
    louder = voiced_db >= np.median(voiced_db)
    return Features(
        loudness=_clip01((total_db + 40.0) / 30.0),
        pitch=_clip01(float(np.median(zcr[voiced][louder])) / 800.0),
        liveliness=_clip01(float(np.std(voiced_db)) / 15.0),
        voiced=float(np.mean(voiced)),
    )


# --------------------------------------------------------------------------- Valence

PROTOTYPES: dict[str, tuple[float, float, float]] = {
    # (loudness, pitch, liveliness); ordinary speech lands around (0.4, 0.35, 0.25)
    "angry": (0.7, 0.5, 0.45),
    "happy": (0.5, 0.55, 0.4),
    "neutral": (0.4, 0.3, 0.2),
    "sad": (0.2, 0.2, 0.1),
    "surprised": (0.55, 0.7, 0.55),
    "disgusted": (0.45, 0.2, 0.35),
    "calm": (0.3, 0.35, 0.1),
}
TEMPERATURE = 0.02


def emotion_scores(f: Features, model: str) -> dict[str, float]:
    """Softmax over the model's emotions of -(squared distance to each prototype) / T."""
    names = VALENCE_MODELS[model]
    point = np.array([f.loudness, f.pitch, f.liveliness])
    logits = np.array([-float(np.sum((point - np.array(PROTOTYPES[n])) ** 2)) / TEMPERATURE for n in names])
    weights = np.exp(logits - logits.max())
    probs = weights / weights.sum()
    return {name: round(float(p), 6) for name, p in zip(names, probs, strict=True)}


def discrete_result(a: Analysis, model: str) -> DiscreteResult:
    scores = emotion_scores(features(a), model)
    main = max(scores, key=scores.__getitem__)
    return DiscreteResult(main_emotion=main, confidence=scores[main], all_predictions=scores)


def timeline(a: Analysis, model: str) -> list[EmotionSegment]:
    """One segment per 5 s of audio (a last piece shorter than 1 s is dropped)."""
    out: list[EmotionSegment] = []
    start = 0.0
    while start < a.duration_s:
        end = min(start + SEGMENT_SECONDS, a.duration_s)
        if end - start < MIN_TAIL_S and out:
            break
        scores = emotion_scores(features(a, start, end), model)
        main = max(scores, key=scores.__getitem__)
        out.append(
            EmotionSegment(
                start_s=start,
                end_s=round(end, 3),
                emotion=main,
                confidence=scores[main],
                all_predictions=scores,
            )
        )
        start += SEGMENT_SECONDS
    return out


# --------------------------------------------------------------------------- Valsea

GRANULARITY: dict[str, tuple[float, float]] = {
    # name: (longest piece in s, shortest pause that splits in s)
    "word": (1.0, 0.1),
    "sentence": (5.0, 0.25),
    "utterance": (5.0, 0.5),
}


def utterances(a: Analysis, granularity: str = "utterance") -> list[tuple[float, float]]:
    """(begin, end) seconds of the voiced pieces: split at pauses, and at the length cap."""
    max_len, min_pause = GRANULARITY[granularity]
    max_frames = max(1, round(max_len / a.frame_s))
    pause_frames = max(1, round(min_pause / a.frame_s))
    voiced = a.db > a.silence_db
    pieces: list[tuple[float, float]] = []
    start: int | None = None
    silent = 0
    for i, v in enumerate(voiced):
        if start is None:
            if v:
                start, silent = i, 0
            continue
        silent = 0 if v else silent + 1
        if silent >= pause_frames:
            pieces.append((start, i - silent + 1))
            start = None
        elif i + 1 - start >= max_frames:
            pieces.append((start, i + 1))
            start = None
    if start is not None:
        pieces.append((start, len(voiced) - silent))
    return [(round(s * a.frame_s, 3), round(min(e * a.frame_s, a.duration_s), 3)) for s, e in pieces]


def _expression_weights() -> np.ndarray:
    rows = []
    for name in PROSODY_EXPRESSIONS:
        digest = hashlib.sha256(name.encode()).digest()
        rows.append([(b / 255.0) * 6.0 - 3.0 for b in digest[:5]])
    return np.array(rows)


_WEIGHTS = _expression_weights()


def expression_scores(f: Features) -> dict[str, float]:
    """48 logistic scores in PROSODY_EXPRESSIONS order."""
    x = np.append(f.vector() - 0.5, 1.0)
    scores = 1.0 / (1.0 + np.exp(-(_WEIGHTS @ x)))
    return {name: round(float(s), 4) for name, s in zip(PROSODY_EXPRESSIONS, scores, strict=True)}


def prosody(a: Analysis, granularity: str = "utterance") -> tuple[ProsodyScores, list[ProsodyUtterance]]:
    """The five summary metrics and the per-piece expression scores."""
    pieces = utterances(a, granularity)
    raw = [
        ProsodyUtterance(
            text=f"{granularity} {i + 1}",
            begin_s=b,
            end_s=e,
            expressions=expression_scores(features(a, b, e)),
        )
        for i, (b, e) in enumerate(pieces)
    ]
    f = features(a)
    rate = min(1.0, len(pieces) / max(a.duration_s / 60.0, 1e-9) / 30.0)
    metrics = {
        "frustration": 0.55 * f.loudness + 0.45 * f.liveliness,
        "stress": 0.5 * f.loudness + 0.5 * f.pitch,
        "politeness": 1.0 - 0.6 * f.loudness - 0.4 * f.liveliness,
        "hesitation": 1.2 * (1.0 - f.voiced),
        "urgency": 0.6 * f.pitch + 0.4 * rate,
    }
    return ProsodyScores(**{k: round(_clip01(v), 4) for k, v in metrics.items()}), raw
