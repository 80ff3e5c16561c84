"""A process killed outright (SIGKILL: no `finally`, no `atexit`) leaves nothing running.

- `valence-pipeline run` with no PREFECT_API_URL, killed mid-run: Prefect's temporary server
  it started, and its dataset child, end with it (`flows/temporary_server.py`,
  `valence_pipeline/processes.py`); before, the server ran on for good.
- A process that started SeaweedFS and the emulator (as the demo does), killed: both end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localstack.processes import alive, descendants, kill_all
from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS, ports_of, remove_sockets
from tests.pipeline.helpers import child_flow_env, configure

CLI = str(Path(sys.executable).with_name("valence-pipeline"))


def started_by(pid: int) -> dict[int, str]:
    """Every live process started by `pid`, at any depth: pid -> command line."""
    return {child: d.cmdline for child, d in descendants(pid).items()}


def wait_until_gone(pids: dict[int, str], timeout_s: float = 30) -> dict[int, str]:
    """Those of `pids` still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    left = dict(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {pid: c for pid, c in left.items() if alive(pid)}
    return left


def test_a_killed_run_leaves_no_temporary_server_behind(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    emu = make_emulator(time_scale=1.0)  # real time: the run is still waiting when killed
    upload_samples(s3_client, bucket, tuple(SampleRecording(f"in/k{i}.wav", 20) for i in range(2)))
    configure(monkeypatch, seaweedfs, emu, f"sqlite:///{tmp_path / 'results.db'}", tmp_path / "out")
    env = child_flow_env(tmp_path / "prefect")
    with (tmp_path / "run.log").open("wb") as log:
        run = subprocess.Popen(
            [CLI, "run", "--source", f"s3://{bucket}/in/"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    members: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (
            any("prefect.server.api.server:create_app" in c for c in members.values())
            and any("dataset worker" in c for c in members.values())
        ):
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.2)
            members = started_by(run.pid)
        assert any("create_app" in c for c in members.values()), members  # its temporary server
        os.kill(run.pid, signal.SIGKILL)  # the run's process only, as the OOM killer would
        run.wait()
        assert wait_until_gone(members) == {}
    finally:
        kill_all({**members, **started_by(run.pid)})
        if run.poll() is None:
            run.kill()
        run.wait()


_STARTS_SERVICES = """
import sys, time
from pathlib import Path
from emulator.process import EmulatorProcess
from localstack.seaweedfs import SeaweedFS

sw = SeaweedFS(Path(sys.argv[1])).start()
emu = EmulatorProcess(valence_key="k" * 24, valsea_key="s" * 24, data_dir=Path(sys.argv[2])).start()
print("up", flush=True)
time.sleep(600)
"""


def test_a_killed_demo_leaves_no_store_or_emulator_behind(tmp_path: Path) -> None:
    members: dict[int, str] = {}
    # What the killed process cannot clean up, the test does: its temporary files go to
    # tmp_path, and weed's sockets (in /tmp whatever TMPDIR says) are removed below.
    (tmp_path / "tmp").mkdir()
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTS_SERVICES, str(tmp_path / "sw"), str(tmp_path / "emu")],
        stdout=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
        start_new_session=True,
    )
    try:
        assert starter.stdout is not None
        assert starter.stdout.readline() == b"up\n"
        members = started_by(starter.pid)
        assert any(" mini " in c for c in members.values()), members  # SeaweedFS
        assert any("commands.main emulator" in c for c in members.values()), members
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait()
        assert wait_until_gone(members) == {}
    finally:
        kill_all({**members, **started_by(starter.pid)})
        if starter.poll() is None:
            starter.kill()
        starter.wait()
        remove_sockets(port for c in members.values() if " mini " in c for port in ports_of(c))
