"""The process tree as /proc shows it (Linux): every process a command started, at any depth,
whatever session it chose; for tests and benchmarks that must find and stop them all, or read
what they used.

A flow run's process (a worker's child) starts a session of its own, and so do Prefect's
temporary server and the run's dataset child, so a process group is not enough to find them:
this walks parent links instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple


class Descendant(NamedTuple):
    depth: int
    """1 for a child of the process asked about, 2 for a grandchild..."""
    cmdline: str


def process_table() -> dict[int, tuple[int, str]]:
    """Live processes (zombies left out): pid -> (parent pid, command line)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in brackets may hold spaces and ")": split after the last one.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # it ended while we looked
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (int(fields[1]), cmdline)
    return found


def descendants(pid: int) -> dict[int, Descendant]:
    """Every live process started by `pid`, at any depth."""
    procs = process_table()
    found: dict[int, Descendant] = {}
    frontier = [(pid, 0)]
    while frontier:
        parent, depth = frontier.pop()
        for child, (ppid, cmdline) in procs.items():
            if ppid == parent and child not in found:
                found[child] = Descendant(depth + 1, cmdline)
                frontier.append((child, depth + 1))
    return found


def alive(pid: int) -> bool:
    """Running, or at least not yet a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each of `pids` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def environ_value(pid: int, name: str) -> str | None:
    """One variable of a process's environment as it started (None if absent or gone)."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = name.encode() + b"="
    return next((e[len(prefix) :].decode() for e in entries if e.startswith(prefix)), None)


def high_water_mib(pid: int) -> float | None:
    """The process's peak resident memory so far (`VmHWM`), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
