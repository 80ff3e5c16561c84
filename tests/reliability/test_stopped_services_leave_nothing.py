"""A local service the project starts leaves nothing behind once stopped: no process (see
test_killed_process_leaves_nothing.py) and no files outside its own folder."""

from __future__ import annotations

from pathlib import Path

from emulator.process import EmulatorProcess
from localstack.seaweedfs import SeaweedFS


def test_a_stopped_seaweedfs_leaves_no_sockets_in_tmp(tmp_path: Path) -> None:
    # weed mini puts a unix socket per service in /tmp, named by the service's port.
    with SeaweedFS(tmp_path / "sw") as sw:
        ports = set(sw.ports.values())
        opened = [p for p in Path("/tmp").glob("seaweedfs-*.sock") if int(p.stem.rsplit("-", 1)[1]) in ports]
        assert opened, "weed mini opened no socket in /tmp: this test no longer checks anything"
    assert [p for p in opened if p.exists()] == []


def test_a_stopped_emulator_leaves_no_data_folder(tmp_path: Path) -> None:
    # Without --data-dir the emulator keeps uploads in a folder of its own under TMPDIR,
    # removed as it exits: also when it exits because it was asked to (SIGTERM).
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with EmulatorProcess(log_path=tmp_path / "emulator.log", env={"TMPDIR": str(tmp)}) as emu:
        assert [p.name for p in tmp.iterdir() if p.name.startswith("valence-emulator-")], (
            "the emulator made no folder of its own: this test no longer checks anything"
        )
        process = emu.process
    assert process is not None and process.returncode is not None
    assert list(tmp.iterdir()) == []
