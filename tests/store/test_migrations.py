"""Migrations from empty, the models/migration match, and refusing a schema that is behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from commands.main import main
from results_store import db
from results_store.models import Base

TABLES = {"recordings", "provider_jobs", "emotion_segments", "prosody_results", "prosody_utterances",
          "pipeline_runs", "lineage"}  # fmt: skip

EXTRA_REVISION = '''
"""test-only: a later revision the database has not seen"""
import sqlalchemy as sa
from alembic import op

revision = "9999_test_only"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pipeline_runs", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("pipeline_runs", "note")
'''


def test_upgrade_from_empty_reaches_head_and_is_repeatable(db_url: str) -> None:
    engine = db.create_engine_for(db_url)
    try:
        assert db.current_revision(engine) is None
        assert db.upgrade(db_url) == db.head_revision()
        assert db.upgrade(db_url) == db.head_revision()
        assert TABLES <= set(sa.inspect(engine).get_table_names())
        db.ensure_schema_current(engine)
    finally:
        engine.dispose()


def test_models_and_migrations_describe_the_same_schema(migrated_url: str) -> None:
    engine = db.create_engine_for(migrated_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()
    assert diff == []


def test_store_refuses_an_empty_database(db_url: str) -> None:
    with pytest.raises(db.SchemaBehindError) as err:
        db.Store(db_url)
    assert str(err.value) == (
        f"database schema is at base (empty), code needs {db.head_revision()}: run `valence-pipeline db upgrade`"
    )


def test_store_refuses_a_database_stamped_back_to_base(migrated_url: str) -> None:
    db.stamp(migrated_url, "base")
    with pytest.raises(db.SchemaBehindError, match="run `valence-pipeline db upgrade`"):
        db.Store(migrated_url)
    db.stamp(migrated_url, "head")
    db.Store(migrated_url).dispose()


def test_database_behind_newer_code_is_refused_until_upgraded(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code that ships a newer revision meets a database at today's head: refused, then upgraded."""
    head = db.head_revision()
    scripts = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_test_only.py").write_text(EXTRA_REVISION.replace("{head}", head))
    monkeypatch.setattr(db, "MIGRATIONS_DIR", scripts)

    with pytest.raises(db.SchemaBehindError) as err:
        db.Store(migrated_url)
    assert f"database schema is at {head}, code needs 9999_test_only" in str(err.value)
    assert main(["db", "upgrade", "--database-url", migrated_url]) == 0
    store = db.Store(migrated_url)
    try:
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("pipeline_runs")}
    finally:
        store.dispose()
    assert "note" in columns


def test_database_ahead_of_the_code_is_refused(migrated_url: str) -> None:
    engine = db.create_engine_for(migrated_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
        with pytest.raises(db.SchemaAheadError, match="newer valence-pipeline"):
            db.ensure_schema_current(engine)
    finally:
        engine.dispose()


def test_db_commands_upgrade_and_report_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "current", "--database-url", db_url]) == 1
    out = capsys.readouterr()
    assert "schema at base (empty)" in out.out and "valence-pipeline db upgrade" in out.err
    assert main(["db", "upgrade", "--database-url", db_url]) == 0
    assert main(["db", "current", "--database-url", db_url]) == 0
    assert f"schema at {db.head_revision()}, code head {db.head_revision()}" in capsys.readouterr().out


def test_db_upgrade_defaults_to_the_settings_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from valence_pipeline.settings import get_settings

    url = f"sqlite:///{tmp_path / 'nested' / 'results.db'}"
    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade"]) == 0
    finally:
        get_settings.cache_clear()
    engine = db.create_engine_for(url)
    try:
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_store_travels_to_tasks_as_its_url(migrated_url: str) -> None:
    import pickle

    store = db.get_store(migrated_url)
    clone = pickle.loads(pickle.dumps(store))  # noqa: S301 - our own bytes, as Prefect would pass them
    assert clone is store  # same process: the cached Store, one pool
    assert pickle.dumps(store) == pickle.dumps(db.get_store(migrated_url))
    with clone.session_scope() as s:
        assert s.execute(sa.text("select 1")).scalar_one() == 1
    store.dispose()


def test_the_wait_for_an_unreachable_database_is_a_setting(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.hooks import _store
    from valence_pipeline.settings import get_settings

    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", migrated_url)
    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_RECONNECT_WAIT_S", "7")
    get_settings.cache_clear()
    try:
        store = _store()
        assert store.reconnect_wait_s == 7
        assert store.__reduce__() == (db.get_store, (migrated_url, 7))  # travels with it to a task
    finally:
        get_settings.cache_clear()
        db.get_store(migrated_url).dispose()
