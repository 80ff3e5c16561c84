"""glibc's malloc tuning of a flow process (valence_pipeline/runtime.py): applied where libc is
glibc, a no-op elsewhere, and malloc works as before either way. Memory itself is measured by
bench/bench_pipeline_throughput.py --only nights, not here."""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any

import pytest

from valence_pipeline import runtime as runtime_module
from valence_pipeline.runtime import keep_large_buffers_out_of_the_heap, share_malloc_arenas


def glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc only")
def test_the_tuning_is_applied_on_glibc_and_threads_still_allocate() -> None:
    assert share_malloc_arenas() is True
    assert share_malloc_arenas() is True  # again: harmless
    keep_large_buffers_out_of_the_heap()
    sizes: list[int] = []

    def allocate() -> None:
        blocks = [bytearray(n) for n in (64, 4096, 300_000, 2 * 1024 * 1024)]
        sizes.append(sum(len(b) for b in blocks))

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sizes == [64 + 4096 + 300_000 + 2 * 1024 * 1024] * 8


def test_without_glibc_nothing_is_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*args: Any, **kwargs: Any) -> Any:
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(runtime_module.ctypes, "CDLL", no_libc)
    assert share_malloc_arenas() is False
    keep_large_buffers_out_of_the_heap()  # no error either


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc only")
def test_free_pages_inside_the_heap_go_back_to_the_system() -> None:
    from valence_pipeline.runtime import release_free_heap

    blocks = [bytearray(4000) for _ in range(10_000)]  # ~40 MB of the heap (under the mmap threshold)
    above = bytearray(4000)  # allocated after them: the heap's top cannot just shrink
    del blocks  # freed, but still resident: glibc keeps the space between live blocks
    freed = _rss_bytes()
    assert release_free_heap() is True
    assert _rss_bytes() < freed - 20 * 2**20
    assert len(above) == 4000


def test_without_glibc_no_heap_is_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    from valence_pipeline.runtime import release_free_heap

    def no_libc(*args: Any, **kwargs: Any) -> Any:
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(runtime_module.ctypes, "CDLL", no_libc)
    assert release_free_heap() is False
