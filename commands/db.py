"""`valence-pipeline db upgrade|current`, `lineage s3://...`, `timeline s3://...`.

Import-light: only argparse here; SQLAlchemy and the store load inside the handlers. All
commands read the database alone, at `Settings.database_url` unless `--database-url` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="results database schema (migrations)")
    actions = db.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="apply migrations up to the code's revision")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    _database_url(upgrade)
    upgrade.set_defaults(func=_upgrade)
    current = actions.add_parser("current", help="show the database's revision and the code's")
    _database_url(current)
    current.set_defaults(func=_current)

    lineage = subparsers.add_parser(
        "lineage", help="object version -> provider jobs -> outputs -> runs, for one recording"
    )
    _recording_args(lineage)
    lineage.set_defaults(func=_lineage)
    timeline = subparsers.add_parser(
        "timeline", help="a recording's emotion timeline with its prosody beside it"
    )
    _recording_args(timeline)
    timeline.set_defaults(func=_timeline)


def _database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: VALENCE_PIPELINE_DATABASE_URL / Settings.database_url)",
    )


def _recording_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="the source object, s3://bucket/key")
    parser.add_argument(
        "--version", help="only this S3 version id (or ETag); default: every version / newest"
    )
    _database_url(parser)


def _url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    from valence_pipeline.settings import get_settings

    return get_settings().database_url.get_secret_value()


def _safe(url: str) -> str:
    from valence_pipeline.settings import safe_url

    return safe_url(url)


def _upgrade(args: argparse.Namespace) -> int:
    from results_store import db

    url = _url(args)
    revision = db.upgrade(url, args.revision)
    print(f"{_safe(url)}: schema at {revision} (code head {db.head_revision()})")
    return 0


def _current(args: argparse.Namespace) -> int:
    from results_store import db

    url = _url(args)
    engine = db.create_engine_for(url)
    try:
        current = db.current_revision(engine)
        head = db.head_revision()
        print(f"{_safe(url)}: schema at {current or 'base (empty)'}, code head {head}")
        db.ensure_schema_current(engine)
    except db.SchemaError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from results_store import report, repository

    def query(session: Session) -> str | None:
        chains = repository.lineage_for_uri(session, args.uri, version=args.version)
        return report.render_lineage(args.uri, chains) if chains else None

    return _run_query(args, query)


def _timeline(args: argparse.Namespace) -> int:
    from results_store import report, repository

    def query(session: Session) -> str | None:
        timeline = repository.timeline_for_uri(session, args.uri, version=args.version)
        return report.render_timeline(timeline) if timeline else None

    return _run_query(args, query)


def _run_query(args: argparse.Namespace, query: Callable[[Session], str | None]) -> int:
    from results_store import db

    try:
        store = db.Store(_url(args))
    except db.SchemaError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        with store.session_scope() as session:
            text = query(session)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        store.dispose()
    if text is None:
        version = f" version {args.version}" if args.version else ""
        print(f"no recording {args.uri}{version} in the results database", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
