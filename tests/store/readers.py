"""Two engines reading the dataset's Delta tables, used to check that both see the same rows.

* deltalake: `DeltaTable(...).to_pyarrow_table()`, delta-rs's own reader (through
  `dataset.read_table`, optionally as of a version).
* DuckDB: SQL over exactly the Parquet files the Delta log lists for that version, read by
  DuckDB's own Parquet reader (`read_parquet([...], hive_partitioning=true)`) on a local
  folder. DuckDB's httpfs/delta extensions cannot be downloaded here, so on S3 DuckDB queries
  a pyarrow dataset over the same listed files (pyarrow's S3 filesystem, not delta-rs's).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from results_store import dataset
from results_store.models import DATASET_TABLES
from results_store.storage import s3_filesystem

KEY_COLUMNS = {
    "emotion_segments": ("recording_id", "provider_job_id", "segment_index"),
    "prosody_utterances": ("recording_id", "provider_job_id", "utterance_index"),
    "prosody_summary": ("recording_id", "provider_job_id"),
    "recordings": ("recording_id",),
}


def duckdb_keys(output_uri: str, table: str, *, version: int | None = None) -> list[tuple[Any, ...]]:
    """Key columns of every row, read by DuckDB from the files the log lists."""
    files = dataset.file_uris(output_uri, table, version=version)
    if not files:
        return []
    columns = ", ".join(KEY_COLUMNS[table])
    con = duckdb.connect()
    try:
        if output_uri.startswith("s3://"):
            spec = DATASET_TABLES[table]
            partitioning = ds.partitioning(
                pa.schema([spec.read_schema.field(n) for n in spec.partition_by]), flavor="hive"
            )
            paths = [f.removeprefix("s3://") for f in files]
            arrow = ds.dataset(paths, filesystem=s3_filesystem(), format="parquet", partitioning=partitioning)
            con.register("t", arrow)
            return con.execute(f"select {columns} from t").fetchall()  # noqa: S608 - fixed column names
        return con.execute(
            f"select {columns} from read_parquet(?, hive_partitioning=true)",  # noqa: S608 - fixed columns
            [files],
        ).fetchall()
    finally:
        con.close()


def keys(data: pa.Table, table: str) -> list[tuple[Any, ...]]:
    cols = [data.column(c).to_pylist() for c in KEY_COLUMNS[table]]
    return list(zip(*cols, strict=True))


def all_readers_keys(
    output_uri: str, table: str, *, version: int | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """The row keys each engine sees, sorted."""
    return {
        "deltalake": sorted(keys(dataset.read_table(output_uri, table, version=version), table)),
        "duckdb": sorted(duckdb_keys(output_uri, table, version=version)),
    }


def duplicates(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [k for k, n in Counter(found).items() if n > 1]
