"""Engines, sessions and schema migrations for the results database.

SQLite (a file, the embedded default) and PostgreSQL (production) run the same code. Alembic
scripts ship inside this package and the Alembic config is built here from the URL, so
`valence-pipeline db upgrade` works from an installed wheel with no alembic.ini around.

Tasks get a `Store` (picklable: it travels as its URL and is rebuilt once per process) and open
their own `session_scope()`; no live session ever crosses a task boundary.

Connection loss (a PostgreSQL restart or fail-over) is handled in one place,
`retry_on_connection_loss`: pooled connections are pinged before use (`pool_pre_ping`), a
transaction that *starts* while the server is unreachable waits for it (capped, growing sleeps,
at most `Store.reconnect_wait_s`, 60 s by default: the pipeline's
`database_reconnect_wait_s` setting) instead of failing at once, and
`Store.transaction(work)` re-runs a whole transaction that the loss interrupted (the server
rolled it back). A transaction cut off by the loss inside a `session_scope` block fails: the
block cannot be replayed from here; its task's retry (or the next run) does it again, and
nothing of it was committed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from valence_client.models import shared_name

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
UPGRADE_COMMAND = "valence-pipeline db upgrade"
# Any constant works: it only has to be the same for every process migrating this database.
_PG_MIGRATION_LOCK = 0x76616C656E6365


class SchemaError(RuntimeError):
    """The database schema does not match what this code needs."""


class SchemaBehindError(SchemaError):
    """The database is at an older revision (or empty): migrations must be applied first."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            f"database schema is at {current or 'base (empty)'}, code needs {head}: run `{UPGRADE_COMMAND}`"
        )


class SchemaAheadError(SchemaError):
    """The database was migrated by newer code: this code must not write to it."""

    def __init__(self, current: str, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            f"database schema is at {current}, which this code (head {head}) does not know: "
            "it was migrated by a newer valence-pipeline; upgrade the package"
        )


# --------------------------------------------------------------------------- engines


def _shared_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {shared_name(key): value for key, value in pairs}


def load_json(text: str | bytes) -> Any:
    """JSON columns as read back, each object key one shared copy (`shared_name`). The same
    few names (the emotions, the 48 expressions) recur in every row: a 9 h recording's
    utterances would otherwise hold ~320,000 separate copies of them (~20 MiB) while the
    Parquet export reads them."""
    return json.loads(text, object_pairs_hook=_shared_keys)


SQLITE_POOL_SIZE = 16
"""Connections a worker keeps open: about its threads that use the database at once (the
engine's checks, sends, harvests, its watch and harvest loops). SQLAlchemy's default (5, plus
10 opened and closed again as needed) made a night open ~1 connection per 2 recordings, each
with its own schema, caches and prepared statements: churn that left a long night's worker
larger than a short one's (and time spent in PRAGMAs). With 16: 15 connections a night."""
SQLITE_CACHE_KIB = 64
"""SQLite page cache per connection (KiB): small, since the OS caches the file anyway."""
SQLITE_CACHED_STATEMENTS = 16
"""Prepared statements kept per connection (the driver's default is 128): with 16 connections
open for good, the default could hold thousands (IN lists of several lengths, see
valence_pipeline/bookkeeping.py `_in_chunks`)."""


def create_engine_for(url: str, *, echo: bool = False) -> Engine:
    """An engine configured for the backend named by `url` (SQLite or PostgreSQL)."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, json_deserializer=load_json)


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    database = make_url(url).database
    in_memory = not database or database == ":memory:"  # one connection per thread: no pool to size
    if database and not in_memory and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    pool: dict[str, int] = (
        {} if in_memory else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_POOL_SIZE}
    )
    engine = sa.create_engine(
        url,
        echo=echo,
        connect_args={"timeout": 60, "cached_statements": SQLITE_CACHED_STATEMENTS},
        json_deserializer=load_json,
        **pool,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL: readers (the CLI) never block the writer and vice versa.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        # Each pooled connection keeps its own page cache (2 MiB by default): filled as the
        # database grows, it made a worker's memory grow with the size of the night.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front. A deferred transaction that reads, then
        # writes, can hit an un-waitable SQLITE_BUSY when two threads upgrade their locks at once.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# --------------------------------------------------------------------------- migrations


def alembic_config() -> Config:
    """Alembic configuration pointing at the scripts shipped in this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("no migration scripts found in the package")
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Apply migrations up to `revision`; returns the revision the database is now at."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two deployments starting at once must not both create the tables.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        now = current_revision(engine)
        log.info("database %s at revision %s", make_url(url).render_as_string(hide_password=True), now)
        return now
    finally:
        engine.dispose()


def stamp(url: str, revision: str) -> None:
    """Record `revision` as applied without running anything (tests and manual repair)."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.stamp(cfg, revision, purge=True)
    finally:
        engine.dispose()


def ensure_schema_current(engine: Engine) -> None:
    """Refuse to run against a database whose schema differs from the code's head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None or current in known_revisions():
        raise SchemaBehindError(current, head)
    raise SchemaAheadError(current, head)


# --------------------------------------------------------------------------- connection loss

T = TypeVar("T")
RECONNECT_WAIT_S = 60.0
"""How long a transaction waits for an unreachable database before it fails."""


def is_connection_loss(exc: BaseException) -> bool:
    """The database went away (refused, reset, shut down, restarting), not a failed statement.

    SQLAlchemy flags a dropped connection (`connection_invalidated`); a refused new connection
    is a driver OperationalError without an SQLSTATE, or class 08 (connection exception) / 57P
    (operator intervention: admin shutdown, crash shutdown, cannot connect now).
    """
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    if exc.orig is not None and type(exc.orig).__module__.startswith("sqlite3"):
        return False  # "database is locked" and friends: the busy timeout already waited
    return state is None or str(state).startswith(("08", "57P"))


def retry_on_connection_loss(work: Callable[[], T], *, wait_s: float = RECONNECT_WAIT_S) -> T:
    """`work()`, run again after a connection loss until `wait_s` has passed (module doc)."""
    deadline = time.monotonic() + wait_s
    delay = 0.25
    attempt = 1
    while True:
        try:
            return work()
        except sa.exc.DBAPIError as exc:
            if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "database connection lost (%s); attempt %d in %.2f s",
                type(exc.orig).__name__,
                attempt + 1,
                delay,
            )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
        attempt += 1


def create_or_check(url: str) -> str | None:
    """What a first run needs: an empty database gets the schema (returns the new revision);
    one at the code's revision is left alone (returns None); one behind (or ahead) raises
    SchemaError, since upgrading a database in use is the operator's call."""
    engine = create_engine_for(url)
    try:
        if current_revision(engine) is None and not sa.inspect(engine).get_table_names():
            return upgrade(url)
        ensure_schema_current(engine)
        return None
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- sessions


class Store:
    """The database handle the pipeline passes around: an engine plus a session factory.

    `Store(url)` checks the schema revision first and raises `SchemaBehindError` when
    migrations are missing. Pickling a Store sends only its URL; the receiving process gets
    its own engine through `get_store`, so connection pools are never shared across processes.
    """

    def __init__(
        self, url: str, *, check_schema: bool = True, reconnect_wait_s: float = RECONNECT_WAIT_S
    ) -> None:
        self.url = url
        self.reconnect_wait_s = reconnect_wait_s
        self.engine = create_engine_for(url)
        if check_schema:
            try:
                retry_on_connection_loss(lambda: ensure_schema_current(self.engine), wait_s=reconnect_wait_s)
            except BaseException:
                self.engine.dispose()
                raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One transaction: commits when the block ends, rolls back if it raises. Waits for a
        database that is unreachable when the transaction starts (module doc)."""
        connection = retry_on_connection_loss(self.engine.connect, wait_s=self.reconnect_wait_s)
        session = self._sessions(bind=connection)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            connection.close()

    def transaction(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one transaction, re-run whole if a connection loss interrupts it
        (the server rolled it back). Only for work that is safe to repeat, as the repository's
        upserts on natural keys are: a loss while committing leaves the outcome unknown."""

        def attempt() -> T:
            with self.session_scope() as session:
                return work(session)

        return retry_on_connection_loss(attempt, wait_s=self.reconnect_wait_s)

    def dispose(self) -> None:
        self.engine.dispose()

    def __reduce__(self) -> tuple[Any, tuple[str, float]]:
        return (get_store, (self.url, self.reconnect_wait_s))

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"


_stores: dict[tuple[str, int], Store] = {}
_stores_lock = threading.Lock()


def get_store(url: str, reconnect_wait_s: float = RECONNECT_WAIT_S) -> Store:
    """The process-wide Store for `url` (one engine and pool per process, built on first use;
    `reconnect_wait_s` applies when this call builds it)."""
    key = (url, os.getpid())
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(url, reconnect_wait_s=reconnect_wait_s)
        return store
