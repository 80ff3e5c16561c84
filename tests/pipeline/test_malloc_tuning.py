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


def test_the_tunables_are_added_to_an_environment_and_an_operators_own_are_kept() -> None:
    from valence_pipeline.processes import MALLOC_TUNABLES, with_malloc_tunables

    assert with_malloc_tunables({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": MALLOC_TUNABLES}
    theirs = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
    assert with_malloc_tunables(theirs)["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=4:{MALLOC_TUNABLES}"
    own_cache = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3"}
    assert with_malloc_tunables(own_cache) == own_cache


# A child that says who it is, starts over with the tunables, then shows whether glibc obeyed:
# a freed block leaves malloc's in-use count only without a per-thread cache to keep it.
_CHILD = """
import ctypes, os
from valence_pipeline.processes import restart_with_malloc_tunables

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
restart_with_malloc_tunables()
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(600)
before = libc.mallinfo2().uordblks
libc.free(block)
print("running", os.getpid(), before - libc.mallinfo2().uordblks >= 600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc only")
def test_a_command_starts_over_once_with_the_tunables_and_glibc_obeys_them() -> None:
    import os
    import subprocess

    from valence_pipeline.processes import MALLOC_TUNABLES

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    pid = out[0].split()[1]
    assert out[:3] == [f"start {pid} None", f"start {pid} {MALLOC_TUNABLES}", f"running {pid} True"]


def test_every_flow_process_of_the_deployments_starts_with_the_tunables() -> None:
    from pathlib import Path

    import yaml

    from valence_pipeline.processes import MALLOC_TUNABLES

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    pool_env = config["definitions"]["work_pool"]["job_variables"]["env"]
    assert pool_env["GLIBC_TUNABLES"] == MALLOC_TUNABLES
    for deployment in config["deployments"]:  # a deployment's own env replaces the pool's
        env = deployment["work_pool"].get("job_variables", {}).get("env", pool_env)
        assert env["GLIBC_TUNABLES"] == MALLOC_TUNABLES, deployment["name"]
