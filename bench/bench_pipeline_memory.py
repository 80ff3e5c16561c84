"""Peak resident memory of processing one ~1 GB recording: our pipeline flow vs a naive peer.

    .venv/bin/python bench/bench_pipeline_memory.py                 # 1023 MiB stereo call
    .venv/bin/python bench/bench_pipeline_memory.py --size-mb 100   # scaled down

One run starts a local SeaweedFS, the provider emulator and a Prefect API server, uploads one
generated stereo call (8 kHz PCM WAV, ~9.3 h at full size: just under the 1 GiB acceptance
limit), then processes it in fresh child processes, side by side, each reporting its own peak
RSS (`ru_maxrss`; a shell forks each child so none inherits this process's accounting):

- pipeline: `process_recordings([uri])` against the Prefect API server in its own process (the
  production shape: a worker's flow process talks to a server);
- pipeline, temporary server: the same flow with no `PREFECT_API_URL`, so the flow process
  launches Prefect's temporary server itself (what `valence-pipeline demo` does);
- naive peer: `s3.get_object(...)["Body"].read()`, then the public `valenceai` SDK's async upload
  of those bytes (written to a temporary file: the SDK takes a path) and its result poll.

Each pipeline run gets a fresh SQLite database, so each one really uploads. Prints peak RSS per
approach with its ratio to the pipeline's and to the 300 MiB target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

MiB = 1024 * 1024
TARGET_MIB = 300
BUCKET = "bench-memory"
KEY = "calls/long-call.wav"
TIME_SCALE = 3600.0
"""The emulator's clock: an emulated hour of provider processing takes a real second."""


@dataclass
class Outcome:
    approach: str
    peak_mib: float
    seconds: float
    note: str = ""


# --------------------------------------------------------------------------- children


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_pipeline(uri: str) -> dict[str, Any]:
    from flows.ingest import process_recordings, run_to_result

    result = run_to_result(process_recordings, uris=[uri], trigger="manual")
    if result["completed"] != 1:
        raise SystemExit(f"pipeline did not complete the recording: {result['summary']}")
    return {"completed": result["completed"]}


def child_naive(uri: str) -> dict[str, Any]:
    """What a developer would write first: the whole object in memory, then the SDK."""
    import boto3
    from valenceai import ValenceClient

    bucket, key = uri.removeprefix("s3://").split("/", 1)
    audio = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    client = ValenceClient(
        api_key=os.environ["VALENCE_API_KEY"],
        base_url=os.environ["VALENCE_API_BASE_URL"],
        show_progress=False,
    )
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        tmp.write(audio)
        tmp.flush()
        request_id = client.asynch.upload(tmp.name)
    result = client.asynch.emotions(request_id, interval_seconds=1)
    return {"bytes": len(audio), "segments": len(result.get("emotions") or [])}


def run_child(mode: str, uri: str) -> None:
    details = {"pipeline": child_pipeline, "naive": child_naive}[mode](uri)
    print(json.dumps({"peak_mib": _peak_mib(), **details}))


# --------------------------------------------------------------------------- parent


def measure(approach: str, mode: str, uri: str, env: dict[str, str]) -> Outcome:
    started = time.monotonic()
    done = subprocess.run(
        ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, __file__, "--child", mode, uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{approach} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Outcome(approach, report["peak_mib"], seconds)


def pipeline_env(workdir: Path, sw: Any, emu: Any, api_url: str | None) -> dict[str, str]:
    """The demo's environment, with a fresh database (so this run uploads) and Prefect API."""
    from localstack.demo import pipeline_env as demo_env
    from results_store.db import upgrade

    env = {**os.environ, **demo_env(workdir, sw, emu, TIME_SCALE)}
    env.pop("PREFECT_API_URL", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    upgrade(env["VALENCE_PIPELINE_DATABASE_URL"])
    return env


@contextmanager
def prefect_api() -> Iterator[str]:
    """A Prefect API server in its own process, on a throwaway database."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def upload_recording(sw: Any, path: Path) -> str:
    import boto3

    s3 = boto3.client("s3", **sw.boto3_kwargs())
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.upload_file(str(path), BUCKET, KEY)
    return f"s3://{BUCKET}/{KEY}"


def run_all(size: int, workdir: Path) -> tuple[list[Outcome], float]:
    from emulator.process import EmulatorProcess
    from localstack.sample_data import write_large_wav
    from localstack.seaweedfs import SeaweedFS

    started = time.monotonic()
    wav = workdir / "call.wav"
    write_large_wav(wav, size, samplerate=8000, channels=2)
    with (
        SeaweedFS(workdir / "seaweedfs") as sw,
        EmulatorProcess(time_scale=TIME_SCALE, data_dir=workdir / "emulator") as emu,
        prefect_api() as api_url,
    ):
        uri = upload_recording(sw, wav)
        wav.unlink()  # the children read S3 only
        prepared = time.monotonic() - started
        outcomes = [
            measure(
                "pipeline flow, Prefect API in another process",
                "pipeline",
                uri,
                pipeline_env(workdir / "api", sw, emu, api_url),
            ),
            measure(
                "pipeline flow, Prefect temporary server",
                "pipeline",
                uri,
                pipeline_env(workdir / "temporary", sw, emu, None),
            ),
            measure(
                "naive: S3 read() + valenceai SDK upload",
                "naive",
                uri,
                {
                    **os.environ,
                    **sw.env(),
                    "VALENCE_API_KEY": emu.valence_key,
                    "VALENCE_API_BASE_URL": emu.base_url,
                },
            ),
        ]
    return outcomes, prepared


def print_table(outcomes: list[Outcome]) -> None:
    ours = outcomes[0].peak_mib
    print(f"{'approach':<48} {'peak RSS MiB':>12} {'vs pipeline':>11} {'vs target':>9} {'seconds':>8}")
    for o in outcomes:
        print(
            f"{o.approach:<48} {o.peak_mib:>12,.0f} {o.peak_mib / ours:>10.2f}x"
            f" {o.peak_mib / TARGET_MIB:>8.2f}x {o.seconds:>8.0f}"
        )
    print(f"{'target':<48} {TARGET_MIB:>12,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size-mb",
        type=int,
        default=1023,
        help="recording size in MiB (default 1023: under the 1 GiB limit)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URI"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child)
        return 0
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    size = args.size_mb * MiB
    frames = (size - 44) // 4
    print(
        f"recording: {size / MiB:,.0f} MiB stereo PCM WAV, 8 kHz, {frames / 8000 / 3600:.1f} h; "
        f"started {dt.datetime.now():%H:%M:%S}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        outcomes, prepared = run_all(size, Path(tmp))
    print(f"(generating and uploading the recording took {prepared:.0f} s)")
    print_table(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
