"""The emulator takes its keys from its environment: its command line (readable by every user
of the machine through `ps` and /proc) never holds one, and the keys it was given still work."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from emulator.process import EmulatorProcess

HEALTH = "/v1/rate-limit/health"


def test_keys_reach_the_emulator_through_its_environment_only(tmp_path: Path) -> None:
    with EmulatorProcess(log_path=tmp_path / "emulator.log", data_dir=tmp_path / "data") as emu:
        assert emu.pid is not None and emu.valsea_key is not None
        cmdline = Path(f"/proc/{emu.pid}/cmdline").read_bytes().decode()
        assert "emulator" in cmdline
        assert emu.valence_key not in cmdline and emu.valsea_key not in cmdline
        ok = requests.get(f"{emu.base_url}{HEALTH}", headers={"x-api-key": emu.valence_key}, timeout=10)
        wrong = requests.get(
            f"{emu.base_url}{HEALTH}", headers={"x-api-key": emu.valence_key + "x"}, timeout=10
        )
        assert ok.status_code == 200 and wrong.status_code == 401
        prosody = requests.get(
            f"{emu.base_url}/v1/prosody/nope",
            headers={"Authorization": f"Bearer {emu.valsea_key}"},
            timeout=10,
        )
        assert prosody.status_code == 404  # authenticated, then not found
    assert emu.valence_key not in (tmp_path / "emulator.log").read_text()


def test_an_emulator_without_valsea_ignores_an_inherited_valsea_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VALSEA_API_KEY", "vs-inherited-from-the-parent")
    with EmulatorProcess(valsea_enabled=False, log_path=tmp_path / "emulator.log") as emu:
        answer = requests.get(
            f"{emu.base_url}/v1/prosody/nope",
            headers={"Authorization": "Bearer vs-inherited-from-the-parent"},
            timeout=10,
        )
        assert answer.status_code == 503  # Valsea "not configured": the inherited key was not used
