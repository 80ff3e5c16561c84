"""Upload speed and memory: our client against the public SDK and boto3, on loopback and on a
simulated WAN link.

    .venv/bin/python bench/bench_upload.py                  # 256 MiB, median of 3
    .venv/bin/python bench/bench_upload.py --size-mb 1024   # the issue's 1 GiB

One run starts SeaweedFS and the provider emulator backed by it (real presigned S3 part URLs),
writes one mono 16-bit PCM WAV (sent byte for byte: no conversion) to a local file and to a
bucket, then uploads it four ways, each in a fresh child process that reports its own peak RSS
(`ru_maxrss`; a shell forks each child so none inherits this process's accounting):

- ours, from a local path: `ValenceClient(memory_budget_mb=32).asynch.upload(path)`;
- ours, streamed from the S3 object (the pipeline's path): `sources.open_payload` (parts read
  by parallel ranged GETs) into the same upload;
- the public `valenceai` SDK, from the local path;
- boto3 `upload_file` of the local path into the same store (the raw ceiling).

"end to end" includes the emulator's `complete` step (it reads the whole object back to
analyse it), "without complete" stops the clock when the last part has landed. Then the same
again over a WAN link: a shaping proxy (`localstack.netproxy`: 40 ms round trip, a bandwidth
cap) in front of the emulator's API and of the S3 the part URLs point at; the pipeline's
source bucket stays local to it (a pipeline runs next to its bucket). Prints MB/s (10^6 B/s),
peak RSS, and ratios against the SDK and boto3; the targets: streamed-from-S3 >= 0.95x the
SDK end to end and on the WAN link, at <= 100 MiB peak RSS. Under each table, CPU seconds per
GiB per process (client, SeaweedFS during the parts and during `complete`, the emulator, the
WAN proxies) and the `complete` time: on a small shared machine the client, the store and the
emulator compete for the same cores, so CPU per byte is what a client can win, and a slow
`complete` with unchanged CPU is the machine's load, not the upload.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

MiB = 1024 * 1024
MEMORY_BUDGET_MB = 32
TARGET_RATIO = 0.95
TARGET_RSS_MIB = 100
WAN_RTT_S = 0.040
WAN_BANDWIDTH_BPS = 50e6  # 400 Mbit/s
SOURCE_BUCKET = "bench-upload-source"
TARGET_BUCKET = "bench-upload-boto3"
KEY = "calls/mono-call.wav"

ROWS = (
    ("ours-path", "ours, from a local path"),
    ("ours-s3", "ours, streamed from the S3 object"),
    ("sdk-path", "public valenceai SDK, local path"),
    ("boto3", "boto3 upload_file, same store"),
)


# --------------------------------------------------------------------------- children


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Timing:
    """What a child measured around the upload itself (its imports and setup excluded)."""

    started: float
    parts_done: float
    ended: float
    cpu_s: float


@contextmanager
def _clock() -> Iterator[Timing]:
    """Times the block; the block sets `parts_done` (defaults to the end)."""
    timing = Timing(time.monotonic(), 0.0, 0.0, _cpu_s())
    yield timing
    timing.ended = time.monotonic()
    timing.parts_done = timing.parts_done or timing.ended
    timing.cpu_s = _cpu_s() - timing.cpu_s


def _ours(source: Any, size: int | None = None, file_name: str | None = None) -> Timing:
    from valence_client import ValenceClient

    client = ValenceClient(
        api_key=os.environ["VALENCE_API_KEY"],
        base_url=os.environ["VALENCE_API_BASE_URL"],
        show_progress=False,
        memory_budget_mb=float(os.environ.get("BENCH_MEMORY_MB", MEMORY_BUDGET_MB)),
    )
    total = size if size is not None else os.path.getsize(source)
    landed = 0
    with _clock() as timing:

        def progress(n: int) -> None:
            nonlocal landed
            landed += n
            if landed >= total:
                timing.parts_done = time.monotonic()

        client.asynch.upload(source, size=size, file_name=file_name, progress=progress)
    return timing


def child_ours_path(path: str) -> Timing:
    return _ours(path)


def child_ours_s3(path: str) -> Timing:
    """The pipeline's path: the object in the source bucket, as `submit` opens it."""
    from valence_pipeline.audio import WAV_HEADER_BYTES, AudioInfo
    from valence_pipeline.s3 import head_version, make_s3_client
    from valence_pipeline.sources import open_payload

    s3 = make_s3_client()
    obj = head_version(s3, SOURCE_BUCKET, KEY)
    # Preflight's verdict on the file `write_wav` made (the upload step gets it as an input).
    frames = (obj.size - WAV_HEADER_BYTES) // 2
    info = AudioInfo(format="WAV", subtype="PCM_16", samplerate=16000, channels=1, frames=frames)
    payload = open_payload(s3, obj, info, "valence")
    assert not payload.converted
    try:
        return _ours(payload.stream, size=payload.size, file_name=payload.name)
    finally:
        payload.close()


def child_sdk_path(path: str) -> Timing:
    import requests
    import valenceai.client
    from valenceai import ValenceClient

    client = ValenceClient(
        api_key=os.environ["VALENCE_API_KEY"],
        base_url=os.environ["VALENCE_API_BASE_URL"],
        show_progress=False,
    )
    real_post = requests.post
    with _clock() as timing:

        def post(url: str, *args: Any, **kwargs: Any) -> Any:
            if url.endswith("/complete"):
                timing.parts_done = time.monotonic()
            return real_post(url, *args, **kwargs)

        valenceai.client.requests.post = post  # type: ignore[attr-defined]  # marks the end of the parts
        client.asynch.upload(path)
    return timing


def child_boto3(path: str) -> Timing:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_TARGET_S3"])
    with _clock() as timing:
        s3.upload_file(path, TARGET_BUCKET, f"runs/{time.time_ns()}.wav")
    return timing


CHILDREN = {
    "ours-path": child_ours_path,
    "ours-s3": child_ours_s3,
    "sdk-path": child_sdk_path,
    "boto3": child_boto3,
}


def run_child(mode: str, path: str) -> None:
    timing = CHILDREN[mode](path)
    report = {**asdict(timing), "peak_mib": _peak_mib()}
    print(json.dumps(report))


# --------------------------------------------------------------------------- parent


@dataclass
class Row:
    mode: str
    label: str
    seconds: float
    upload_s: float
    peak_mib: float
    cpu: dict[str, float]
    """Median CPU seconds per process and phase (`CPU_COLUMNS`)."""


_TICKS = os.sysconf("SC_CLK_TCK")
CPU_SAMPLE_S = 0.05

CPU_COLUMNS = (
    ("client", "client"),
    ("weed_parts", "weed parts"),
    ("weed_complete", "weed complete"),
    ("emulator", "emu complete"),
    ("bench", "WAN proxies"),
)
"""Where the CPU goes: the client child (during the upload, imports excluded), SeaweedFS while
the parts go up and during `complete`, the emulator during `complete`, this process (the WAN
proxies run in it)."""


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """Samples the CPU seconds of SeaweedFS, the emulator and this process (which runs the WAN
    proxies) every 50 ms while a child uploads, so their cost splits into the parts phase and
    the emulator's `complete`: on 2 cores the store's CPU per byte competes with the client's."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self._samples.append((time.monotonic(), {k: process_cpu_s(p) for k, p in self._pids.items()}))

    def _run(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_S):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def at(self, moment: float) -> dict[str, float]:
        """The last sample taken at or before `moment` (the first, if none)."""
        best = self._samples[0][1]
        for taken, values in self._samples:
            if taken > moment:
                break
            best = values
        return best

    def between(self, name: str, start: float, end: float) -> float:
        return self.at(end)[name] - self.at(start)[name]


SETTLE_IDLE = 0.05
"""CPU share under which SeaweedFS and the emulator count as at rest between rows."""
SETTLE_MAX_S = 120.0


def settle(pids: dict[str, int]) -> tuple[float, float]:
    """Wait until SeaweedFS and the emulator are at rest (each under `SETTLE_IDLE` of a core
    over half a second); (seconds waited, their CPU seconds meanwhile). Work the store might
    still do for the last row would land in the next row's window and slow whichever client
    comes next; so far it was always at rest within a second (the wait is printed when longer)."""
    started = time.monotonic()
    first = {k: process_cpu_s(p) for k, p in pids.items()}
    before = first
    while time.monotonic() - started < SETTLE_MAX_S:
        time.sleep(0.5)
        now = {k: process_cpu_s(p) for k, p in pids.items()}
        if all(now[k] - before[k] < SETTLE_IDLE * 0.5 for k in pids):
            break
        before = now
    return time.monotonic() - started, sum(now[k] - first[k] for k in pids)


def measure(mode: str, path: Path, env: dict[str, str], pids: dict[str, int]) -> dict[str, float]:
    waited, busy = settle(pids)
    if waited > 1.0:
        print(
            f"  ({mode}: waited {waited:.1f} s for the store to come to rest, {busy:.1f} CPU s)",
            file=sys.stderr,
        )
    with CpuMeter({**pids, "bench": os.getpid()}) as meter:
        done = subprocess.run(
            ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, __file__, "--child", mode, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    child: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    started, parts_done, ended = child["started"], child["parts_done"], child["ended"]
    return {
        "seconds": ended - started,
        "upload_s": parts_done - started,
        "peak_mib": child["peak_mib"],
        "client": child["cpu_s"],
        "weed_parts": meter.between("weed", started, parts_done),
        "weed_complete": meter.between("weed", parts_done, ended),
        "emulator": meter.between("emulator", parts_done, ended),
        "bench": meter.between("bench", started, ended),
    }


def run_link(
    path: Path, env: dict[str, str], pids: dict[str, int], repeat: int, warmup: Path, modes: list[str]
) -> list[Row]:
    # The emulator creates its S3 client and bucket on the first upload: not part of any row.
    measure("ours-path", warmup, env, pids)
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(repeat):
        for mode in modes:  # interleaved, so a slow moment hits every row alike
            samples[mode].append(measure(mode, path, env, pids))
            if os.environ.get("BENCH_VERBOSE"):  # every sample, to judge the spread behind a median
                m = samples[mode][-1]
                print(
                    f"  {mode:10} {m['seconds']:6.1f} s e2e, parts {m['upload_s']:5.1f} s, "
                    f"CPU s client {m['client']:5.2f} weed {m['weed_parts']:5.2f}",
                    file=sys.stderr,
                )
    return [
        Row(
            mode,
            label,
            statistics.median(s["seconds"] for s in samples[mode]),
            statistics.median(s["upload_s"] for s in samples[mode]),
            max(s["peak_mib"] for s in samples[mode]),
            {key: statistics.median(s[key] for s in samples[mode]) for key, _ in CPU_COLUMNS},
        )
        for mode, label in ROWS
        if mode in samples
    ]


def print_cpu(rows: list[Row], size: int) -> None:
    per_gib = (1024 * MiB) / size
    labels = "".join(f" {label:>13}" for _, label in CPU_COLUMNS)
    print(f"{'CPU s per GiB (median)':<36}{labels} {'complete s':>11}")
    for r in rows:
        figures = "".join(f" {r.cpu[key] * per_gib:>13.2f}" for key, _ in CPU_COLUMNS)
        print(f"{r.label:<36}{figures} {r.seconds - r.upload_s:>11.1f}")


def print_table(title: str, rows: list[Row], size: int) -> None:
    by_mode = {r.mode: r for r in rows}
    if set(by_mode) != {mode for mode, _ in ROWS}:  # a partial run (--rows): figures only
        print(f"\n{title}")
        for r in rows:
            print(
                f"{r.label:<36} e2e {size / r.seconds / 1e6:.1f} MB/s, parts {size / r.upload_s / 1e6:.1f} MB/s,"
                f" {r.peak_mib:.0f} MiB"
            )
        print_cpu(rows, size)
        return
    sdk, boto = by_mode["sdk-path"], by_mode["boto3"]
    print(f"\n{title}")
    header = (
        f"{'client':<36} {'MB/s e2e':>9} {'MB/s w/o complete':>18} {'peak RSS MiB':>13}"
        f" {'vs SDK e2e':>11} {'vs SDK w/o':>11} {'vs boto3':>9}"
    )
    print(header)
    for r in rows:
        e2e, parts = size / r.seconds / 1e6, size / r.upload_s / 1e6
        print(
            f"{r.label:<36} {e2e:>9.1f} {parts:>18.1f} {r.peak_mib:>13.0f}"
            f" {sdk.seconds / r.seconds:>10.2f}x {sdk.upload_s / r.upload_s:>10.2f}x"
            f" {boto.upload_s / r.upload_s:>8.2f}x"
        )
    ours = by_mode["ours-s3"]
    ok = sdk.seconds / ours.seconds >= TARGET_RATIO and ours.peak_mib <= TARGET_RSS_MIB
    print(
        f"target (streamed from S3 >= {TARGET_RATIO}x the SDK end to end, <= {TARGET_RSS_MIB} MiB):"
        f" {'met' if ok else 'NOT met'}"
    )
    print_cpu(rows, size)


def write_wav(path: Path, size: int) -> None:
    from localstack.sample_data import write_large_wav

    write_large_wav(path, size, samplerate=16000, channels=1)


def host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


def _pid(process: subprocess.Popen[Any] | None) -> int:
    assert process is not None, "started above"
    return process.pid


@contextmanager
def services(workdir: Path, path: Path) -> Iterator[dict[str, Any]]:
    """SeaweedFS with the recording in a bucket, two emulators (local and behind the WAN) and
    the two WAN proxies; everything is stopped on the way out."""
    import boto3

    from emulator.process import EmulatorProcess
    from localstack.netproxy import NetProxy
    from localstack.seaweedfs import SeaweedFS

    with ExitStack() as stack:
        sw = stack.enter_context(SeaweedFS(workdir / "seaweedfs"))
        s3 = boto3.client("s3", **sw.boto3_kwargs())
        for bucket in (SOURCE_BUCKET, TARGET_BUCKET):
            s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(path), SOURCE_BUCKET, KEY)
        env = {**os.environ, **sw.env()}
        wan_s3 = stack.enter_context(
            NetProxy(host_port(sw.endpoint_url), rtt_s=WAN_RTT_S, bandwidth_bps=WAN_BANDWIDTH_BPS)
        )
        local_emu = stack.enter_context(
            EmulatorProcess(data_dir=workdir / "emu-local", s3_endpoint=sw.endpoint_url, env=sw.env())
        )
        wan_emu = stack.enter_context(
            EmulatorProcess(
                data_dir=workdir / "emu-wan",
                s3_endpoint=sw.endpoint_url,
                s3_public_endpoint=wan_s3.url,
                env=sw.env(),
            )
        )
        wan_api = stack.enter_context(
            NetProxy(host_port(wan_emu.base_url), rtt_s=WAN_RTT_S, bandwidth_bps=WAN_BANDWIDTH_BPS)
        )
        yield {
            "pids": {
                "loopback": {"weed": _pid(sw.process), "emulator": _pid(local_emu.process)},
                "wan": {"weed": _pid(sw.process), "emulator": _pid(wan_emu.process)},
            },
            "loopback": {
                **env,
                "VALENCE_API_KEY": local_emu.valence_key,
                "VALENCE_API_BASE_URL": local_emu.base_url,
                "BENCH_TARGET_S3": sw.endpoint_url,
            },
            "wan": {
                **env,
                "VALENCE_API_KEY": wan_emu.valence_key,
                "VALENCE_API_BASE_URL": wan_api.url,
                "BENCH_TARGET_S3": wan_s3.url,
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=256, help="recording size in MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is shown (default 3)")
    parser.add_argument("--no-wan", action="store_true", help="skip the simulated WAN link")
    parser.add_argument(
        "--memory-mb", type=float, default=MEMORY_BUDGET_MB, help="our clients' upload memory budget"
    )
    parser.add_argument(
        "--rows", default=",".join(m for m, _ in ROWS), help="comma-separated subset of rows (for tuning)"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child)
        return 0
    os.environ["BENCH_MEMORY_MB"] = str(args.memory_mb)  # the children inherit it
    size = args.size_mb * MiB
    modes = [m for m in args.rows.split(",") if m]
    print(
        f"recording: {size / MiB:,.0f} MiB mono PCM16 WAV; median of {args.repeat}; "
        f"started {dt.datetime.now():%H:%M:%S}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        path = Path(tmp) / "call.wav"
        write_wav(path, size)
        size = path.stat().st_size
        warmup = Path(tmp) / "warmup.wav"
        write_wav(warmup, 6 * MiB)
        with services(Path(tmp), path) as envs:
            loopback = run_link(path, envs["loopback"], envs["pids"]["loopback"], args.repeat, warmup, modes)
            print_table("loopback", loopback, size)
            if not args.no_wan:
                wan = run_link(path, envs["wan"], envs["pids"]["wan"], args.repeat, warmup, modes)
                print_table(
                    f"WAN: {WAN_RTT_S * 1000:.0f} ms round trip, {WAN_BANDWIDTH_BPS * 8 / 1e6:.0f} Mbit/s",
                    wan,
                    size,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
