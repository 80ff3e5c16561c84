"""The three ways people read the dataset, used to check what each one sees.

* `read_table`: our reader, over the committed file list in the log.
* plain pyarrow: `pyarrow.dataset` over a table folder, Hive partitioning, no log.
* plain DuckDB: `read_parquet('<table>/**/*.parquet', hive_partitioning=true)` on a local
  folder. DuckDB's httpfs extension cannot be downloaded here, so on S3 DuckDB queries the
  plain pyarrow dataset (still no log involved).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from results_store import parquet
from results_store.models import DATASET_TABLES
from results_store.storage import s3_filesystem

KEY_COLUMNS = {
    "emotion_segments": ("recording_id", "provider_job_id", "segment_index"),
    "prosody_utterances": ("recording_id", "provider_job_id", "utterance_index"),
    "prosody_summary": ("recording_id", "provider_job_id"),
    "recordings": ("recording_id",),
}


def plain_dataset(output_uri: str, table: str) -> ds.Dataset | None:
    """`pyarrow.dataset` straight over the table folder; None if the folder has no files."""
    if output_uri.startswith("s3://"):
        fs: pafs.FileSystem = s3_filesystem()
        path = f"{output_uri[len('s3://') :].rstrip('/')}/{table}"
    else:
        fs, path = pafs.LocalFileSystem(), f"{output_uri.rstrip('/')}/{table}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    schema = DATASET_TABLES[table].read_schema
    partitioning = ds.partitioning(
        pa.schema([schema.field(n) for n in DATASET_TABLES[table].partition_by]), flavor="hive"
    )
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning=partitioning, schema=schema)


def plain_pyarrow(output_uri: str, table: str) -> pa.Table:
    dataset = plain_dataset(output_uri, table)
    return DATASET_TABLES[table].read_schema.empty_table() if dataset is None else dataset.to_table()


def plain_duckdb_keys(output_uri: str, table: str) -> list[tuple[Any, ...]]:
    columns = ", ".join(KEY_COLUMNS[table])
    con = duckdb.connect()
    try:
        if output_uri.startswith("s3://"):
            arrow_dataset = plain_dataset(output_uri, table)
            if arrow_dataset is None:
                return []
            con.register("t", arrow_dataset)
            return con.execute(f"select {columns} from t").fetchall()  # noqa: S608 - fixed column names
        glob = f"{output_uri.rstrip('/')}/{table}/**/*.parquet"
        try:
            return con.execute(
                f"select {columns} from read_parquet('{glob}', hive_partitioning=true)"  # noqa: S608 - test paths
            ).fetchall()
        except duckdb.IOException:  # no files match the glob yet
            return []
    finally:
        con.close()


def keys(data: pa.Table, table: str) -> list[tuple[Any, ...]]:
    cols = [data.column(c).to_pylist() for c in KEY_COLUMNS[table]]
    return list(zip(*cols, strict=True))


def all_readers_keys(output_uri: str, table: str) -> dict[str, list[tuple[Any, ...]]]:
    """The row keys each reader sees, sorted."""
    return {
        "read_table": sorted(keys(parquet.read_table(output_uri, table), table)),
        "pyarrow": sorted(keys(plain_pyarrow(output_uri, table), table)),
        "duckdb": sorted(plain_duckdb_keys(output_uri, table)),
    }


def duplicates(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [k for k, n in Counter(found).items() if n > 1]
