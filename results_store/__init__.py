"""The results store: the SQL database with per-file lineage, and the dataset (Delta Lake tables).

Modules (import what you use; this package import stays light for the CLI):
  db          engines, `Store` / `session_scope()`, migrations (`upgrade`, `ensure_schema_current`)
  repository  idempotent bulk upserts and the lineage/timeline queries, each taking a Session
  records     the typed values passed in and returned
  models      SQLAlchemy models, with each dataset table's versioned Arrow schema and natural key beside its model
  dataset     `DatasetWriter` (once per run, Delta merges), `read_table` (any version), `compact`, `vacuum`
  cli         `valence-pipeline db upgrade|current`, `lineage`, `timeline`
"""
