"""The run's dataset child (`valence-pipeline dataset worker`): requests answered one at a time,
a failure reported (and the child kept), a dead child replaced, and no child outliving its run."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from results_store import db
from tasks.dataset_child import DatasetChild


@pytest.fixture
def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DatasetChild:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    db.upgrade(url)
    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", url)  # the child reads the same settings
    monkeypatch.setenv("VALENCE_PIPELINE_OUTPUT_URI", str(tmp_path / "dataset"))
    return DatasetChild()


def test_requests_are_answered_and_a_failure_keeps_the_child(child: DatasetChild) -> None:
    try:
        child.start()
        first = child._proc
        assert child.call({"op": "export", "run_id": "r1", "recordings": None}) == []
        with pytest.raises(RuntimeError, match="unknown request 'nope'"):
            child.call({"op": "nope", "run_id": "r1"})
        assert child.call({"op": "compact", "run_id": "r1"}) == 0
        assert child.call({"op": "pictures", "day": "2026-11-21"}) == ""  # a day without calls
        assert child._proc is first  # one child for the whole run
    finally:
        child.close()


def test_a_child_that_dies_during_a_request_fails_it_and_the_retry_gets_a_new_one(
    child: DatasetChild,
) -> None:
    try:
        child.start()
        assert child._proc is not None
        pid = child._proc.pid
        os.kill(pid, signal.SIGSTOP)  # it cannot answer before it dies
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        with pytest.raises(RuntimeError, match="the child exited"):
            child.call({"op": "export", "run_id": "r1", "recordings": None})
        assert child.call({"op": "export", "run_id": "r1", "recordings": None}) == []  # the task's retry
        assert child._proc is not None and child._proc.pid != pid
    finally:
        child.close()


def test_a_child_found_dead_is_replaced_before_the_request(child: DatasetChild) -> None:
    try:
        child.start()
        assert child._proc is not None
        child._proc.kill()
        child._proc.wait()
        assert child.call({"op": "compact", "run_id": "r1"}) == 0
    finally:
        child.close()


def test_the_child_ends_with_its_parents_pipe(child: DatasetChild) -> None:
    """A run killed outright closes the pipe: the child sees the end of its input and exits."""
    child.start()
    proc = child._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()  # what the kernel does when the flow process dies
    assert proc.wait(timeout=60) == 0
    child.close()
