"""Alembic environment: runs on the connection `results_store.db.upgrade` hands over.

There is no alembic.ini; `db.alembic_config()` builds the config in code. Invoked another way
(e.g. the `alembic` command with `-x url=...`), it builds its own engine from that URL.
"""

from __future__ import annotations

from alembic import context

from results_store.db import create_engine_for
from results_store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use `valence-pipeline db upgrade --database-url URL`")
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
