"""The one settings object, read from the environment (and an optional `.env`).

Provider keys and URLs keep the public SDK's variable names (`VALENCE_API_KEY`, ...), so a
user's existing environment works unchanged; everything the pipeline itself owns lives under
the `VALENCE_PIPELINE_` prefix. S3 is configured the boto3 way (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, profiles, ...), not here.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".valence-pipeline"
Provider = Literal["valence", "valsea"]


class Settings(BaseSettings):
    """All configuration. Secrets are `SecretStr`: their repr and str print `**********`."""

    model_config = SettingsConfigDict(
        env_prefix="VALENCE_PIPELINE_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    # --- providers (SDK-compatible names, no prefix) -------------------------------------
    valence_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VALENCE_API_KEY", "valence_api_key")
    )
    valence_api_base_url: str = Field(
        default="https://api.getvalenceai.com",
        validation_alias=AliasChoices("VALENCE_API_BASE_URL", "valence_api_base_url"),
    )
    valence_websocket_url: str = Field(
        default="wss://api.getvalenceai.com",
        validation_alias=AliasChoices("VALENCE_WEBSOCKET_URL", "valence_websocket_url"),
    )
    valsea_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VALSEA_API_KEY", "valsea_api_key")
    )
    valsea_api_base_url: str = Field(
        default="https://api.valsea.ai",
        validation_alias=AliasChoices("VALSEA_API_BASE_URL", "valsea_api_base_url"),
    )

    # --- pipeline (VALENCE_PIPELINE_*) ----------------------------------------------------
    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_HOME / 'results.db'}",
        description="SQLAlchemy URL of the results database (SQLite file by default).",
    )
    output_uri: str = Field(
        default=str(DEFAULT_HOME / "parquet"),
        description="Parquet dataset root: a local folder or an s3://bucket/prefix.",
    )
    valence_model: Literal["4emotions", "7emotions"] = "4emotions"
    providers: list[Provider] = Field(default_factory=lambda: list[Provider](["valence", "valsea"]))
    channel_mode: Literal["downmix", "split"] = "downmix"
    valsea_language: str | None = None
    valsea_granularity: Literal["word", "sentence", "utterance"] = "utterance"
    valsea_response_format: Literal["json", "verbose_json"] = "verbose_json"
    audio_suffixes: list[str] = Field(default_factory=lambda: [".wav", ".flac", ".ogg", ".mp3"])
    min_duration_s: float = 4.0
    max_file_bytes: int = 1024**3
    discrete_max_duration_s: float = 10.0
    discrete_max_bytes: int = 6 * 1024 * 1024
    min_confidence: float = 0.38

    # transport / upload
    http_timeout_s: float = 30.0
    http_max_retries: int = 4
    upload_part_size: int = 5 * 1024 * 1024
    upload_threads: int = 3
    max_concurrent_files: int = 4

    # client-side rate limits (documented example limits; refreshed from /v1/rate-limit/status)
    valence_rate_limits: dict[str, int] = Field(
        default_factory=lambda: {"second": 10, "minute": 100, "hour": 1000, "day": 10000}
    )
    valsea_rate_limits: dict[str, int] = Field(
        default_factory=lambda: {"second": 10, "minute": 100, "hour": 1000, "day": 10000}
    )

    # waiting for results: first status call near the expected finish, then capped backoff.
    # Valence documents a ~10 s pickup and 1-2 min of processing per audio hour; Valsea is silent,
    # so the same order of magnitude is assumed.
    valence_pickup_delay_s: float = 10.0
    valence_s_per_audio_hour: float = 90.0
    valsea_pickup_delay_s: float = 5.0
    valsea_s_per_audio_hour: float = 60.0
    poll_min_interval_s: float = 5.0
    poll_max_interval_s: float = 60.0
    poll_deadline_s: float = 6 * 3600.0

    log_level: str = "INFO"

    # upload notifications (`valence-pipeline events webhook|watch`)
    events_secret: SecretStr | None = Field(
        default=None, description="Shared secret every notification POST must carry (never logged)."
    )
    events_sns_topic_arns: list[str] = Field(
        default_factory=list,
        description="SNS topics whose signed messages are accepted without the secret.",
    )
    events_batch_max_objects: int = Field(
        default=50, ge=1, le=500, description="Objects per upload event (and flow run) at most."
    )
    events_batch_max_wait_s: float = Field(
        default=30.0, gt=0, description="How long a notice waits for others before its batch goes out."
    )
    events_watch_lookback_s: float = Field(
        default=900.0, ge=0, description="Window before the watcher's cursor that each scan re-checks."
    )

    def fingerprint(self) -> str:
        """Hash of the settings that change results (recorded per run for lineage); no secrets."""
        relevant = {
            "valence_api_base_url": self.valence_api_base_url,
            "valsea_api_base_url": self.valsea_api_base_url,
            "valence_model": self.valence_model,
            "providers": self.providers,
            "channel_mode": self.channel_mode,
            "valsea_language": self.valsea_language,
            "valsea_granularity": self.valsea_granularity,
            "valsea_response_format": self.valsea_response_format,
            "min_duration_s": self.min_duration_s,
            "max_file_bytes": self.max_file_bytes,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call `get_settings.cache_clear()` after changing env."""
    return Settings()
