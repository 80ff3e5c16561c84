"""The results store: the SQL database with per-file lineage, and the Parquet dataset.

Modules (import what you use; this package import stays light for the CLI):
  db          engines, `Store` / `session_scope()`, migrations (`upgrade`, `ensure_schema_current`)
  repository  idempotent bulk upserts and the lineage/timeline queries, each taking a Session
  records     the typed values passed in and returned
  models      SQLAlchemy models, with each Parquet table's versioned Arrow schema beside its model
  parquet     `DatasetWriter` (once per run), `read_table`, `compact`, `recover`
  cli         `valence-pipeline db upgrade|current`, `lineage`, `timeline`
"""
