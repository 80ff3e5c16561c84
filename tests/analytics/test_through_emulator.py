"""Analytics on timelines the real emulator produced, from audio built to have a known answer:
its stand-in model hears a quiet low tone as neutral and a loud, high, pulsing tone as angry
(emulator/audio.py), so a call whose last third is the loud tone must be flagged escalated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from analytics import compute_and_store
from emulator.process import EmulatorProcess
from results_store import repository as repo
from results_store.models import JobStatus, Provider, RecordingStatus
from results_store.records import JobIn, RecordingIn
from tests.analytics.calls import PROCESSED
from tests.store.factories import RUN_ID, start_run
from valence_client import ValenceClient
from valence_client.limiter import WindowRateLimiter
from valence_pipeline.settings import Settings

SR = 16_000
NEUTRAL = (120.0, 0.15, 0.5, 2.0)  # Hz, amplitude, modulation depth, modulation Hz
ANGRY = (220.0, 0.35, 0.95, 3.0)


def tone(seconds: float, freq: float, amp: float, depth: float, mod_hz: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    envelope = amp * (1 + depth * np.sin(2 * np.pi * mod_hz * t)) / (1 + depth)
    return (envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav(path: Path, *parts: tuple[float, tuple[float, float, float, float]]) -> Path:
    sf.write(path, np.concatenate([tone(seconds, *shape) for seconds, shape in parts]), SR, subtype="PCM_16")
    return path


def analyse(client: ValenceClient, path: Path) -> Any:
    request_id = client.asynch.upload(str(path))
    return client.asynch.wait(request_id, initial_interval_s=0.05, max_interval_s=0.5, deadline_s=None)


def test_emulated_timelines_escalate_when_the_last_third_turns_angry(
    emu: EmulatorProcess, store: Any, tmp_path: Path
) -> None:
    turns = wav(tmp_path / "turns.wav", (40, NEUTRAL), (20, ANGRY))
    calm = wav(tmp_path / "calm.wav", (60, NEUTRAL))
    client = ValenceClient(api_key=emu.valence_key, base_url=emu.base_url, show_progress=False,
                           comprehensive_output=True, limiter=WindowRateLimiter())  # fmt: skip
    with client:
        # A split call: the agent stays calm (channel 0), the customer turns angry (channel 1).
        results = {
            "turns": {None: analyse(client, turns)},
            "split": {0: analyse(client, calm), 1: analyse(client, turns)},
        }
        results["calm"] = {None: analyse(client, calm)}
    settings = Settings(_env_file=None)
    rows: dict[str, Any] = {}
    with store.session_scope() as s:
        start_run(s)
        for n, (name, statuses) in enumerate(results.items()):
            rec = repo.upsert_recording(
                s,
                RecordingIn(bucket="calls", key=f"calls/2026-11-21/sales/ann/{name}.wav", etag=f'"{n}"', size_bytes=1,
                            version_id="v1", sha256=None, content_type="audio/wav", duration_s=60.0,
                            sample_rate=SR, channels=2 if name == "split" else 1),
            )  # fmt: skip
            for channel, status in statuses.items():
                job = repo.upsert_provider_job(
                    s,
                    JobIn(recording_id=rec.id, provider=Provider.VALENCE, model=None, external_id=status.request_id,
                          status=JobStatus.COMPLETED, channel=channel, flow_run_id=RUN_ID),
                )  # fmt: skip
                repo.save_emotion_segments(s, job, status.emotions, flow_run_id=RUN_ID)
            repo.set_recording_status(s, rec.id, RecordingStatus.COMPLETED, at=PROCESSED)
            rows[name] = compute_and_store(s, rec.id, settings)

        turned = rows["turns"][0]
        assert [s.emotion for s in results["turns"][None].emotions] == ["neutral"] * 8 + ["angry"] * 4
        assert turned.escalated and (turned.first_third_emotion, turned.last_third_emotion) == (
            "neutral",
            "angry",
        )
        assert turned.model == "4emotions"  # learned from the comprehensive scores, not asked for
        assert turned.longest_negative_s == 20.0
        assert not rows["calm"][0].escalated and rows["calm"][0].dominant_emotion == "neutral"
        split = {r.scope: (r.role, r.escalated) for r in rows["split"]}
        assert split == {"call": (None, True), "channel:0": ("agent", False), "channel:1": ("customer", True)}
