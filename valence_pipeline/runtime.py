"""Per-process wiring: the clients, the store and the S3 client that tasks share.

Tasks receive plain values (URIs, ids) and reach their collaborators through `runtime()`, so
nothing unpicklable crosses a task boundary and every thread of a run shares one HTTP pool,
one rate limiter per provider and one database engine.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from valence_pipeline.settings import Settings, get_settings

if TYPE_CHECKING:  # the heavy collaborators are imported when first used
    from valence_client import ValenceClient, ValseaClient
    from valence_pipeline.bookkeeping import PipelineStore

log = logging.getLogger(__name__)


class Runtime:
    """The one wiring point of a worker process: settings, clients, store and S3, built once
    (lazily) and shared by every thread of every run the process makes."""

    def __init__(self, settings: Settings) -> None:
        keep_large_buffers_out_of_the_heap()
        self.settings = settings

    def _limiter(self, provider: str, limits: dict[str, int]) -> Any:
        from valence_client.limiter import WindowRateLimiter

        windows = self.settings.rate_windows
        if not self.settings.shared_rate_limits:  # this process only (tests, one-offs)
            return WindowRateLimiter(limits, name=provider, windows=windows)
        from valence_pipeline.limits import database_limiter

        return database_limiter(self.store.store, provider, limits, windows)

    @cached_property
    def valence(self) -> ValenceClient:
        from valence_pipeline.providers import valence_client

        return valence_client(
            self.settings, limiter=self._limiter("valence", self.settings.valence_rate_limits)
        )

    @cached_property
    def valsea(self) -> ValseaClient:
        from valence_pipeline.providers import valsea_client

        return valsea_client(self.settings, limiter=self._limiter("valsea", self.settings.valsea_rate_limits))

    @cached_property
    def store(self) -> PipelineStore:
        from valence_pipeline.bookkeeping import PipelineStore

        use_system_arrow_allocator()
        return PipelineStore(
            self.settings.database_url.get_secret_value(), self.settings.database_reconnect_wait_s
        )

    @cached_property
    def s3(self) -> Any:
        from valence_pipeline.s3 import make_s3_client

        return make_s3_client()

    def learn_provider_limits(self) -> None:
        """Take the provider's own word on its limits as a ceiling (`/v1/rate-limit/status`)."""
        from valence_client.errors import ValenceSDKException
        from valence_pipeline.limits import DatabaseLedger

        if "valence" not in self.settings.providers or not self.settings.shared_rate_limits:
            return
        try:
            status = self.valence.rate_limit.get_status()
        except ValenceSDKException as exc:
            log.info("could not read Valence's rate-limit status (%s); using the settings' limits", exc)
            return
        ledger = getattr(self.valence.transport.limiter, "ledger", None)
        if isinstance(ledger, DatabaseLedger):
            ledger.learn_server_limits({name: w.limit for name, w in status.limits.items()})

    def api_stats(self) -> dict[str, int]:
        """Calls, retries and 429s per provider so far (for the run summary)."""
        stats: dict[str, int] = {}
        for name in ("valence", "valsea"):
            client = self.__dict__.get(name)
            if client is None:
                continue
            for key, value in client.stats.items():
                stats[f"{name}_{key}"] = int(value)
        return stats


# `mallopt` parameter numbers (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1024 * 1024
ARENA_MAX = 2


def keep_large_buffers_out_of_the_heap() -> None:
    """Fix glibc's mmap threshold at 1 MiB. Upload parts (5 MiB), S3 read windows and response
    bodies come and go all run long; glibc raises its threshold the first time such a block is
    freed, and from then on carves them from the heap, whose freed space stays resident (~30
    MiB more at a 1 GiB recording's peak). Above a fixed threshold they are mapped, then
    returned to the system when freed."""
    _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def share_malloc_arenas() -> bool:
    """At most `ARENA_MAX` glibc heaps (arenas) for the whole process; True if applied.

    glibc gives threads that allocate at once heaps of their own, up to 8 per core: a run's
    ~25 threads (the engine's pools, Prefect's) had 16. Each keeps much of the space it freed,
    so a night's churn of small objects left 0.3-3 MiB resident in each, more the longer the
    night: 3 MiB in all after 10 s, 24 MiB at the end of a night of 2,000 recordings (~10 MiB
    with two). The threads mostly wait on the network, not on each other's malloc.

    glibc fixes the number when it first needs more than 8 heaps, so call this at the start of
    the process, before its threads (the flows' module does, on import). Harmless later, and
    a no-op where libc is not glibc."""
    return _mallopt(M_ARENA_MAX, ARENA_MAX)


def release_free_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the system (`malloc_trim(0)`); True if
    anything was released. A long night frees and reallocates all the time; the freed space
    between live blocks stays resident until trimmed, so a worker's memory grew with the length
    of the night. The engine calls this now and then (it costs a walk of the free lists)."""
    trim = _glibc("malloc_trim")
    return trim is not None and bool(trim(0))


def _mallopt(param: int, value: int) -> bool:
    mallopt = _glibc("mallopt")
    return mallopt is not None and bool(mallopt(param, value))


def _glibc(name: str) -> Any:
    """glibc's function `name`, or None where libc is not glibc (macOS, musl): nothing to tune."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def use_system_arrow_allocator() -> None:
    """Arrow's default allocator (mimalloc) keeps freed pages for reuse: one Parquet export of
    a 9 h recording then peaks ~25 MiB higher. The system allocator hands them back, and the
    few small tables of a run gain nothing from the caching."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's Runtime, built from the current settings on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def reset_runtime(rt: Runtime | None = None) -> None:
    """Start afresh (a new run, or tests that change settings); `rt` installs a given one."""
    global _runtime
    with _lock:
        _runtime = rt
