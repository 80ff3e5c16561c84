"""Memory: a recording just under the 1 GiB acceptance limit goes through the whole pipeline
(preflight hash, streamed downmix to Valence, streamed submit to Valsea, ~6,700 timeline rows
and as many prosody utterances persisted, Parquet export) in a flow process whose peak RSS
stays under 300 MiB.

The flow runs in a child process so the measurement is the pipeline alone: not pytest, not
the file generator. As in production, the child talks to a Prefect API in another process: a
flow process started without `PREFECT_API_URL` launches Prefect's temporary server itself, and
although that server runs as a subprocess, launching it imports Prefect's server stack into
the process being measured (+30 to +50 MiB at this run's peak; bench/bench_pipeline_memory.py
measures both).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localstack.sample_data import write_large_wav
from localstack.seaweedfs import SeaweedFS
from tests.fixtures.children import run_measured_child
from tests.pipeline.helpers import child_flow_env, configure, count, paid, statuses
from valence_pipeline.audio import WAV_HEADER_BYTES
from valence_pipeline.settings import Settings

MIB = 1024 * 1024
LIMIT_BYTES: int = Settings.model_fields["max_file_bytes"].default
SIZE = LIMIT_BYTES - MIB
"""Just under the acceptance limit (1 GiB: larger files are rejected before any API call)."""
SAMPLERATE = 8000
CHANNELS = 2
"""A stereo telephone call (~9.3 h at 8 kHz): the shape that makes the pipeline downmix."""
PEAK_LIMIT_MIB = 300
KEY = "calls/nine-hour-call.wav"


@pytest.fixture(scope="module")
def big_call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generated once per module, block by block (never whole in memory), removed afterwards."""
    path = tmp_path_factory.mktemp("big-call") / "call.wav"
    write_large_wav(path, SIZE, samplerate=SAMPLERATE, channels=CHANNELS)
    yield path
    path.unlink(missing_ok=True)


def run_flow_in_child(prefect_home: Path, api_url: str, uri: str) -> dict[str, Any]:
    """`process_recordings([uri])` in a fresh process; its peak RSS report."""
    env = {**child_flow_env(prefect_home), "PREFECT_API_URL": api_url}
    return run_measured_child("tests.pipeline.memory_child", uri, env=env, timeout_s=500)


@pytest.mark.slow
def test_gigabyte_stereo_call_is_processed_under_300_mib(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    big_call: Path,
    prefect_api: str,
    tmp_path: Path,
) -> None:
    size = big_call.stat().st_size
    assert LIMIT_BYTES - MIB - 4 < size < LIMIT_BYTES  # the generator kept to the size asked for
    s3_client.upload_file(str(big_call), bucket, KEY)  # boto3's multipart: bounded memory here too
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")

    report = run_flow_in_child(tmp_path / "child-prefect", prefect_api, f"s3://{bucket}/{KEY}")
    print(f"\npipeline memory, {size / MIB:.0f} MiB stereo call: {report}")

    assert statuses(database_url) == {KEY: ("completed", None)}
    assert paid(emu) == Counter({"valence_async": 1, "valsea_job": 1})
    frames = (size - WAV_HEADER_BYTES) // (2 * CHANNELS)
    billed = {e["kind"]: e for e in emu.ledger()["entries"]}
    # Valence got the mono downmix (half the bytes), Valsea the original call, both whole.
    assert billed["valence_async"]["bytes"] == WAV_HEADER_BYTES + frames * 2
    assert billed["valsea_job"]["bytes"] == size
    assert count(database_url, "emotion_segments") >= frames / SAMPLERATE // 5 - 1  # one row per 5 s segment
    assert report["peak_mib"] < PEAK_LIMIT_MIB, report
    assert report["vm_hwm_mib"] is None or report["vm_hwm_mib"] < PEAK_LIMIT_MIB, report


# --------------------------------------------------------------------------- what it took


def test_json_columns_read_back_share_their_keys(tmp_path: Path) -> None:
    """6,700 utterances x 48 expression names must not be 320,000 separate strings."""
    import sqlalchemy as sa

    from results_store.db import create_engine_for

    table = sa.Table(
        "t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("j", sa.JSON)
    )
    engine = create_engine_for(f"sqlite:///{tmp_path / 'j.db'}")
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"j": {"Anger": 0.1}}, {"j": {"Anger": 0.2}}])
    with engine.connect() as conn:
        first, second = conn.execute(sa.select(table.c.j).order_by(table.c.id)).scalars()
    engine.dispose()
    assert first == {"Anger": 0.1} and second == {"Anger": 0.2}
    assert next(iter(first)) is next(iter(second))
