"""The provider clients as the pipeline's settings configure them.

`valence_client` is the lower layer (it knows nothing of the pipeline's settings), so the
mapping from `Settings` to client options lives here, above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valence_pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    from valence_client import ValenceClient, ValseaClient


def valence_client(settings: Settings | None = None, **overrides: Any) -> ValenceClient:
    """A Valence client configured by `settings` (the process settings by default); keyword
    `overrides` win."""
    from valence_client import ValenceClient
    from valence_client.upload import MiB

    settings = settings or get_settings()
    options: dict[str, Any] = {
        "api_key": settings.valence_api_key,
        "base_url": settings.valence_api_base_url,
        "websocket_url": settings.valence_websocket_url,
        "part_size": settings.upload_part_size,
        "max_threads": settings.upload_threads,
        "show_progress": False,
        # Every timeline row then carries all the model's scores, not only the top one;
        # their label set is also how we learn which model produced an async job.
        "comprehensive_output": True,
        "timeout": settings.http_timeout_s,
        "max_retries": settings.http_max_retries,
        "rate_limits": settings.valence_rate_limits,
        "max_upload_mb": settings.max_file_bytes / MiB,
        "memory_budget_mb": settings.upload_memory_mb,
        "check_part_etags": settings.upload_check_etags,
    }
    options.update(overrides)
    return ValenceClient(**options)


def valsea_client(settings: Settings | None = None, **overrides: Any) -> ValseaClient:
    """A Valsea client configured by `settings` (the process settings by default); keyword
    `overrides` win."""
    from valence_client import ValseaClient

    settings = settings or get_settings()
    options: dict[str, Any] = {
        "api_key": settings.valsea_api_key,
        "base_url": settings.valsea_api_base_url,
        "timeout": settings.http_timeout_s,
        "max_retries": settings.http_max_retries,
        "rate_limits": settings.valsea_rate_limits,
    }
    options.update(overrides)
    return ValseaClient(**options)
