"""`valence-pipeline demo`: the whole product on one machine, no credentials, no credits.

Starts SeaweedFS and the provider emulator on free loopback ports, fills a bucket with a dozen
generated recordings (once: later demos reuse them, so a second run has nothing to pay for),
runs the nightly flow on Prefect's temporary server with SQLite and a local dataset folder (Delta Lake tables),
prints the run summary and where every output is, and stops what it started.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

from localstack.sample_data import DEMO_SET, upload_samples
from localstack.seaweedfs import SeaweedFS

log = logging.getLogger(__name__)

BUCKET = "recordings"


def _missing_samples(s3: Any) -> bool:
    try:
        listed = s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0)
    except s3.exceptions.NoSuchBucket:
        return True
    return listed < len(DEMO_SET)


def pipeline_env(workdir: Path, sw: SeaweedFS, emu: Any, time_scale: float) -> dict[str, str]:
    """Everything the run needs, as the environment a user would set (no code-level overrides)."""
    return {
        **sw.env(),
        "VALENCE_API_KEY": emu.valence_key,
        "VALENCE_API_BASE_URL": emu.base_url,
        "VALENCE_WEBSOCKET_URL": emu.base_url.replace("http", "ws", 1),
        "VALSEA_API_KEY": emu.valsea_key,
        "VALSEA_API_BASE_URL": emu.base_url,
        "VALENCE_PIPELINE_DATABASE_URL": f"sqlite:///{workdir / 'results.db'}",
        "VALENCE_PIPELINE_OUTPUT_URI": str(workdir / "dataset"),
        # The emulator's clock runs `time_scale` times faster; expect results that much sooner.
        "VALENCE_PIPELINE_VALENCE_PICKUP_DELAY_S": str(10.0 / time_scale),
        "VALENCE_PIPELINE_VALENCE_S_PER_AUDIO_HOUR": str(90.0 / time_scale),
        "VALENCE_PIPELINE_VALSEA_PICKUP_DELAY_S": str(5.0 / time_scale),
        "VALENCE_PIPELINE_VALSEA_S_PER_AUDIO_HOUR": str(60.0 / time_scale),
        "VALENCE_PIPELINE_POLL_MIN_INTERVAL_S": "0.2",
        "VALENCE_PIPELINE_POLL_MAX_INTERVAL_S": "2",
        "PREFECT_HOME": str(workdir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def run_demo(workdir: Path, time_scale: float = 600.0) -> int:
    import boto3

    from emulator.process import EmulatorProcess

    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.pop("PREFECT_API_URL", None)  # Prefect's temporary server, always
    with SeaweedFS(workdir / "seaweedfs") as sw:
        s3 = boto3.client("s3", **sw.boto3_kwargs())
        if _missing_samples(s3):
            print(f"uploading {len(DEMO_SET)} generated recordings to s3://{BUCKET}/ ...", flush=True)
            upload_samples(s3, BUCKET)
        emulator_dir = workdir / "emulator"
        with EmulatorProcess(
            valence_key=secrets.token_urlsafe(24),
            valsea_key=secrets.token_urlsafe(24),
            time_scale=time_scale,
            data_dir=emulator_dir,
        ) as emu:
            os.environ.update(pipeline_env(workdir, sw, emu, time_scale))
            result = _run_nightly()
            ledger = emu.ledger()
    _print_outcome(workdir, result, ledger)
    return 0


def _run_nightly() -> dict[str, Any]:
    # Imported only now: Prefect and the settings must see the environment set above.
    from flows.ingest import nightly_ingest, run_to_result
    from results_store.db import upgrade
    from valence_pipeline.logs import setup_logging
    from valence_pipeline.runtime import reset_runtime
    from valence_pipeline.settings import get_settings

    get_settings.cache_clear()
    reset_runtime()
    setup_logging("WARNING")
    upgrade(get_settings().database_url.get_secret_value())
    from flows.temporary_server import temporary_prefect_server

    with temporary_prefect_server():
        return run_to_result(nightly_ingest, source=f"s3://{BUCKET}/", trigger="manual")


def _print_outcome(workdir: Path, result: dict[str, Any], ledger: dict[str, Any]) -> None:
    paid = Counter(entry["kind"] for entry in ledger["entries"])
    print()
    print(result["summary"])
    print()
    print(
        "Paid to the (emulated) providers in this run:",
        ", ".join(f"{k}={v}" for k, v in paid.items()) or "nothing",
    )
    print()
    print("Results:")
    print(f"  database       sqlite:///{workdir / 'results.db'}")
    print(
        f"  dataset        {workdir / 'dataset'} (Delta tables: valence-pipeline dataset show emotion_segments --output-uri ...)"
    )
    print(f"  recordings     s3://{BUCKET}/ in SeaweedFS data at {workdir / 'seaweedfs'}")
    print(f"  prefect runs   {workdir / 'prefect'} (the temporary server's database)")
    print(
        "Try: valence-pipeline lineage s3://recordings/calls/2026-11-20/sales-call-stereo-3m.wav "
        f"--database-url sqlite:///{workdir / 'results.db'}"
    )
