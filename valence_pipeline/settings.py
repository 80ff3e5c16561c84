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
    database_url: SecretStr = Field(
        default=SecretStr(f"sqlite:///{DEFAULT_HOME / 'results.db'}"),
        description="SQLAlchemy URL of the results database (SQLite file by default). Secret: "
        "it can hold a password; read it with `.get_secret_value()`, print it with `safe_url`.",
    )
    database_reconnect_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a transaction that starts while the database is unreachable (a "
        "restart, a fail-over) waits for it before failing.",
    )
    output_uri: str = Field(
        default=str(DEFAULT_HOME / "dataset"),
        description="Dataset root (one Delta Lake table per result table): a local folder or an s3://bucket/prefix.",
    )
    dataset_retention_days: float = Field(
        default=7.0,
        ge=0,
        description="The nightly compaction vacuums dataset files no table version of the last N days needs.",
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

    # per-call analytics (analytics/): what counts, who is who, where dimensions come from
    channel_roles: dict[str, str] = Field(
        default_factory=lambda: {"0": "agent", "1": "customer"},
        description="Role of each channel of a split call, by channel number.",
    )
    negative_emotions: list[str] = Field(
        default_factory=lambda: ["angry", "sad", "disgusted"],
        description="Emotions that count as negative for the escalation flag and streaks.",
    )
    escalation_margin: float = Field(
        default=0.2,
        description="A call escalates when its negative share rises by more than this from the first third to the last.",
    )
    dimension_pattern: str | None = Field(
        default="calls/{date}/{queue}/{agent}/{call_id}.wav",
        description="Object-key pattern naming the dimensions; `{name}` matches one path segment.",
    )
    dimension_metadata: bool = Field(
        default=True, description="Also take dimensions from the object's S3 user metadata (they win)."
    )

    # transport / upload
    http_timeout_s: float = 30.0
    http_max_retries: int = 4
    upload_part_size: int = 5 * 1024 * 1024
    upload_threads: int = 3

    # the run model (see valence_pipeline/engine.py)
    max_concurrent_files: int = Field(
        default=4, description="uploads/submits in flight per provider per worker"
    )
    check_workers: int = Field(default=2, description="recordings checked (preflight) at once per worker")
    harvest_workers: int = Field(default=4, description="status calls in flight per worker")
    lease_s: float = Field(default=60.0, description="a worker holds a recording this long between renewals")
    watch_interval_s: float = 0.5
    step_attempts: int = Field(default=3, description="tries of one step for one recording before it fails")
    step_retry_delay_s: float = 10.0
    twin_wait_s: float = 2.0
    resend_unknown: bool = Field(
        default=False,
        description="send again a Valsea submit or Valence discrete call whose outcome is unknown "
        "(its answer was lost, or its worker died before storing it): it may be paid twice",
    )
    batch_size: int = Field(default=50, description="recordings per batch handed to the work pool")
    sweep_patience_s: float | None = Field(
        default=None,
        gt=0,
        description="how long the night leaves never-claimed recordings to its batches while one "
        "still runs (a batch whose worker died stays Running until an automation crashes it) "
        "before taking them on itself; unset: ten leases, at least 300 s",
    )
    batch_deployment: str | None = Field(
        default=None,
        description="`flow/deployment` that runs a night's batches on the work pool; unset: in this process",
    )
    pictures_max_calls: int = Field(
        default=300, description="draw the night's pictures in the run summary up to this many calls"
    )
    shared_rate_limits: bool = Field(
        default=True, description="count provider calls in the results database, shared by every worker"
    )
    rate_windows: Literal["fixed", "sliding"] = Field(
        default="fixed",
        description="How the providers count calls: `fixed` windows that start over at whole "
        "seconds/minutes/hours/days of Unix time (what the per-window `reset` timestamps of "
        "`/v1/rate-limit/status` describe; each window's whole quota is used), or `sliding` "
        "ones (safe with any provider, slower after a burst). A 429 switches a worker to sliding.",
    )
    upload_memory_mb: float = Field(
        default=32.0,
        description="Audio bytes one upload may hold; its part size and parts in flight follow "
        "from this and the file size (valence_client.upload.plan_upload).",
    )
    upload_check_etags: bool | None = Field(
        default=None,
        description="Compare each uploaded part's ETag with the MD5 of what was sent. Unset: only "
        "over plain HTTP to another machine (HTTPS authenticates every byte; loopback has no wire); "
        "true or false: always or never (valence_client.upload.checks_etags).",
    )

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

    # A run row still `running` this long after it started is a crashed run (its process died
    # without a hook running); the next run closes it. Longer than any real run.
    stale_run_after_s: float = 24 * 3600.0

    log_level: str = "INFO"

    def secrets(self) -> list[str]:
        """Every configured secret value (keys, the database password), for the redaction list."""
        values = [s.get_secret_value() for s in (self.valence_api_key, self.valsea_api_key) if s is not None]
        password = database_password(self.database_url.get_secret_value())
        return values + ([password] if password else [])

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


def database_password(url: str) -> str | None:
    """The password inside a SQLAlchemy URL, if any (None for a URL that does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


def safe_url(url: str) -> str:
    """A database URL fit to print: the password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call `get_settings.cache_clear()` after changing env."""
    return Settings()
