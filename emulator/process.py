"""`EmulatorProcess`: the emulator as a child process, for tests, benchmarks and the demo.

    with EmulatorProcess(time_scale=3600) as emu:
        client = ValenceClient(api_key=emu.valence_key, base_url=emu.base_url)
        ...
        assert emu.ledger()["by_sha256"][sha]["total"] == 1

It runs `python -m commands.main emulator --port 0 ...`, reads the port from the one
line the emulator prints on stdout, and sends the child's log (stderr) to a file (`log_path`).
Keys are random unless given, and reach the child through its environment (`VALENCE_API_KEY`,
`VALSEA_API_KEY`), never its command line. Faults are always passed explicitly, so an inherited
`VALENCE_EMULATOR_FAULTS` never leaks into a child that was asked for none.
"""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from emulator.server import ANNOUNCEMENT
from valence_pipeline.processes import ending_with_this_process, stop_process

_PREFIX = ANNOUNCEMENT.format(url="")


class EmulatorProcess:
    def __init__(
        self,
        *,
        valence_key: str | None = None,
        valsea_key: str | None = None,
        valsea_enabled: bool = True,
        time_scale: float = 1.0,
        faults: str = "",
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        valsea_credits: int | None = None,
        retention_s: float | None = None,
        url_expiry_s: float | None = None,
        valence_limits: str | tuple[int, int, int, int] | None = None,
        valsea_limits: str | tuple[int, int, int, int] | None = None,
        min_part_size: int | None = None,
        timeline_shape: str | None = None,
        discrete_shape: str | None = None,
        s3_endpoint: str | None = None,
        s3_bucket: str | None = None,
        s3_public_endpoint: str | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        log_level: str = "INFO",
        startup_timeout_s: float = 15.0,
    ) -> None:
        self.valence_key = valence_key or "va-" + secrets.token_urlsafe(16)
        self.valsea_key: str | None = (
            (valsea_key or "vs-" + secrets.token_urlsafe(16)) if valsea_enabled else None
        )
        self.time_scale = time_scale
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        inherited = {"VALENCE_EMULATOR_FAULTS", "VALENCE_API_KEY", "VALSEA_API_KEY"}
        keys = {"VALENCE_API_KEY": self.valence_key} | (
            {"VALSEA_API_KEY": self.valsea_key} if self.valsea_key else {}
        )
        self._env = {k: v for k, v in os.environ.items() if k not in inherited} | (env or {}) | keys
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="valence-emulator-log-")
            log_path = Path(self._tmp.name) / "emulator.log"
        self.log_path = log_path

        args = ["--host", host, "--port", str(port)]
        args += ["--time-scale", repr(float(time_scale)), "--faults", faults, "--seed", str(seed)]
        args += ["--log-level", log_level]
        options: dict[str, Any] = {
            "--data-dir": data_dir,
            "--valsea-credits": valsea_credits,
            "--retention-s": retention_s,
            "--url-expiry-s": url_expiry_s,
            "--valence-limits": _limits(valence_limits),
            "--valsea-limits": _limits(valsea_limits),
            "--min-part-size": min_part_size,
            "--timeline-shape": timeline_shape,
            "--discrete-shape": discrete_shape,
            "--s3-endpoint": s3_endpoint,
            "--s3-bucket": s3_bucket,
            "--s3-public-endpoint": s3_public_endpoint,
        }
        for flag, value in options.items():
            if value is not None:
                args += [flag, str(value)]
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EmulatorProcess:
        if self.process is not None:
            return self
        cmd = [sys.executable, "-m", "commands.main", "emulator", *self.args]
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                ending_with_this_process(cmd),
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._env,
                text=True,
                start_new_session=True,
            )
        finally:
            log.close()
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def pump() -> None:  # the first line is the announcement; later lines are drained
            for line in stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, name="emulator-stdout", daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout_s)
        except queue.Empty:
            line = None
        if not line or not line.startswith(_PREFIX):
            self.stop()
            raise RuntimeError(f"emulator did not start (got {line!r}); log:\n{self.log_tail()}")
        self.base_url = line.strip()[len(_PREFIX) :]
        return self

    def stop(self) -> None:
        proc, self.process = self.process, None
        stop_process(proc)

    def restart(self) -> EmulatorProcess:
        """Stop and start again on the same port with the same keys (all state is lost, as
        with a real server restart); connected clients see their connections drop."""
        port = self.base_url.rsplit(":", 1)[-1]
        if not port.isdigit():
            raise RuntimeError("restart() needs a started emulator")
        self.stop()
        self.args[self.args.index("--port") + 1] = port
        return self.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ admin API

    def _admin(self, method: str, path: str, json: Any = None) -> Any:
        import requests

        resp = requests.request(method, f"{self.base_url}{path}", json=json, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def ledger(self) -> dict[str, Any]:
        """`{"entries": [...], "by_sha256": {sha: {kind: n, "total": n}}, "valsea_credits_remaining"}`."""
        return dict(self._admin("GET", "/_emulator/ledger"))

    def requests_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        suffix = f"?limit={limit}" if limit else ""
        return list(self._admin("GET", f"/_emulator/requests{suffix}")["requests"])

    def set_faults(self, spec: str) -> None:
        """Replace the fault spec (and restart the seeded draws, so a sequence replays)."""
        self._admin("PUT", "/_emulator/faults", {"spec": spec})

    def set_credits(self, credits: int) -> None:
        self._admin("PUT", "/_emulator/credits", {"credits": credits})

    def advance_clock(self, seconds: float) -> float:
        """Move the emulated clock forward; returns the emulated now."""
        return float(self._admin("POST", "/_emulator/clock/advance", {"seconds": seconds})["now_s"])

    def reset(self) -> None:
        """Forget jobs, ledger, log and rate counters; restore the start-up faults and credits."""
        self._admin("POST", "/_emulator/reset")


def _limits(value: str | tuple[int, int, int, int] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)
