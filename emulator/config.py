"""Everything the emulator can be told, in one frozen object (built by the CLI or by tests)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from emulator.faults import FaultSpec

WINDOWS: tuple[tuple[str, int], ...] = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))
"""Rate-limit windows (name, length in real seconds), as `/v1/rate-limit/status` names them."""

DOCUMENTED_LIMITS: tuple[int, int, int, int] = (10, 100, 1000, 10000)
"""The example limits of the SDK README (10/s, 100/min, 1,000/h, 10,000/day)."""

MIB = 1024 * 1024


def parse_limits(text: str) -> tuple[int, int, int, int]:
    """'10,100,1000,10000' -> per second, minute, hour and day (all positive)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"limits need 4 comma-separated numbers (second,minute,hour,day), got {text!r}")
    values = tuple(int(p) for p in parts)
    if any(v <= 0 for v in values):
        raise ValueError(f"limits must be positive, got {text!r}")
    return values[0], values[1], values[2], values[3]


@dataclass(frozen=True)
class EmulatorConfig:
    """Emulator settings. Times marked *emulated* run `time_scale` times faster than real time;
    rate-limit windows and presigned-URL expiry are real time (as a real server's would be)."""

    valence_keys: tuple[str, ...]
    valsea_keys: tuple[str, ...] = ()
    """Empty: every Valsea call answers 503 "service not configured"."""
    host: str = "127.0.0.1"
    port: int = 0
    time_scale: float = 1.0
    faults: FaultSpec = field(default_factory=FaultSpec)
    seed: int = 0
    data_dir: Path | None = None
    """Where uploaded parts and submitted files are written; None: a temporary folder."""

    valence_limits: tuple[int, int, int, int] = DOCUMENTED_LIMITS
    valsea_limits: tuple[int, int, int, int] = DOCUMENTED_LIMITS
    valsea_credits: int = 1_000_000
    retention_s: float = 24 * 3600.0
    """Emulated seconds a finished async result or Valsea job is kept before answering 404."""
    url_expiry_s: float = 3600.0
    """Real seconds a presigned part URL stays valid."""
    min_part_size: int = 5 * MIB
    """S3's EntityTooSmall rule: every part but the last must be at least this big (0: off)."""
    timeline_shape: Literal["000", "002"] = "000"
    discrete_shape: Literal["000", "002"] = "002"

    s3_endpoint: str | None = None
    """With an endpoint, async uploads go to this S3 (real presigned URLs); else to our disk."""
    s3_bucket: str = "valence-emulator"
    s3_public_endpoint: str | None = None
    """Where presigned part URLs point (clients' route to the S3, e.g. a shaping proxy); the
    emulator's own S3 calls keep `s3_endpoint`."""
    url_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    """HMAC key of our own presigned part URLs."""

    # Processing model (emulated seconds), after the provider's documentation.
    pickup_interval_s: float = 10.0
    """The async background processor looks for new uploads this often."""
    processing_s_per_audio_hour: float = 90.0
    processing_overhead_s: float = 2.0
    valsea_queue_s: float = 2.0
    valsea_processing_s_per_audio_s: float = 0.05
    valsea_overhead_s: float = 3.0

    def __post_init__(self) -> None:
        if not self.valence_keys:
            raise ValueError("at least one Valence key is needed")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.retention_s <= 0 or self.url_expiry_s < 0:
            raise ValueError("retention_s must be positive and url_expiry_s not negative")
        if self.valsea_credits < 0 or self.min_part_size < 0:
            raise ValueError("valsea_credits and min_part_size must not be negative")
