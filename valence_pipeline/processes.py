"""Child processes that end with the process that started them.

A process killed outright (SIGKILL, the OOM killer) runs no `finally`, no `atexit`: the
servers it started (Prefect's temporary server, the demo's SeaweedFS and emulator) would keep
running for good, holding ports and memory. On Linux the kernel can send a child a signal when
its parent dies (`prctl(PR_SET_PDEATHSIG)`), a setting that survives `exec`. So a command is
started through this module: it asks for SIGTERM on its parent's death, makes sure the parent
did not die in the meantime, then becomes the command (`exec`, same pid, nothing in between).

The signal follows the parent *thread* that forked the child, so start such children from a
thread that lives as long as they should (the main thread, as every caller here does).
Elsewhere than Linux the command runs as is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

PR_SET_PDEATHSIG = 1

MALLOC_TUNABLES = "glibc.malloc.tcache_count=0"
"""glibc settings every flow process starts with (`GLIBC_TUNABLES`; read once, at exec).

No per-thread cache of freed blocks (tcache). Each thread keeps up to 7 freed blocks of each
size up to 1 KiB for itself; malloc counts them as in use, and `malloc_trim` cannot reach
them. A run's ~23 threads filled theirs over the first minutes of a night: ~2 MiB more in use
in a night of 800 than in one of 100, where the creep had not had time to happen. Without
it, malloc's in-use memory stays flat all night (bench/bench_pipeline_throughput.py --only
nights). Python's small objects never reach malloc (its own allocator), so little is lost."""


def with_malloc_tunables(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with `MALLOC_TUNABLES` added (an operator's own tcache setting is kept)."""
    out = dict(env)
    current = out.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.tcache_count" not in current:
        out["GLIBC_TUNABLES"] = f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES
    return out


def restart_with_malloc_tunables() -> None:
    """Become this same command again (`exec`: same pid, same arguments) with
    `MALLOC_TUNABLES` in the environment, unless it is there already or libc is not glibc.
    Call it first thing, before threads or open files: the command starts over."""
    if not sys.platform.startswith("linux"):
        return
    env = with_malloc_tunables(os.environ)
    if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
        return
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018 - glibc only (not musl)
    except AttributeError:
        return
    os.execve(sys.executable, sys.orig_argv, env)  # noqa: S606 - this very command again


def ending_with_this_process(cmd: list[str]) -> list[str]:
    """`cmd`, started so that it gets SIGTERM when the calling process dies."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-m", "valence_pipeline.processes", str(os.getpid()), *cmd]


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10) -> None:
    """Ask `proc` to end (SIGTERM), then kill it if it has not within `timeout_s`; reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _become(parent: int, cmd: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request: no signal will come
        sys.exit(0)
    os.execvp(cmd[0], cmd)  # noqa: S606 - the caller's own argv, no shell by design


if __name__ == "__main__":
    _become(int(sys.argv[1]), sys.argv[2:])
