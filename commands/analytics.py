"""`valence-pipeline report --date D [--out FILE]` and `calls --date D [--escalated] [--agent A] [--queue Q]`.

Import-light: only argparse here. Both read the results database alone, at
`Settings.database_url` unless `--database-url` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any


def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report", help="one self-contained HTML page of a night: rollup, escalated calls, failures"
    )
    _common(report)
    report.add_argument("--out", help="write the page here (default: calls-DATE.html)")
    report.set_defaults(func=_report)
    calls = subparsers.add_parser("calls", help="a night's calls with their key figures")
    _common(calls)
    calls.add_argument("--escalated", action="store_true", help="only calls that escalated")
    calls.add_argument("--agent", help="only this agent's calls (the `agent` dimension)")
    calls.add_argument("--queue", help="only this queue's calls (the `queue` dimension)")
    calls.set_defaults(func=_calls)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date", required=True, type=dt.date.fromisoformat, help="processing day, YYYY-MM-DD (UTC)"
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: VALENCE_PIPELINE_DATABASE_URL / Settings.database_url)",
    )


def _open(args: argparse.Namespace) -> Any:
    from results_store import db
    from valence_pipeline.settings import get_settings

    settings = get_settings()
    try:
        url = args.database_url or settings.database_url.get_secret_value()
        return settings, db.Store(url, reconnect_wait_s=settings.database_reconnect_wait_s)
    except db.SchemaError as exc:
        print(str(exc), file=sys.stderr)
        return settings, None


def _report(args: argparse.Namespace) -> int:
    from analytics.page import render_night

    settings, store = _open(args)
    if store is None:
        return 2
    try:
        with store.session_scope() as session:
            page = render_night(session, args.date, settings)
    finally:
        store.dispose()
    out = args.out or f"calls-{args.date.isoformat()}.html"
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(page)
    print(f"wrote {out} ({len(page.encode()) / 1024:.0f} KiB)")
    return 0


def _calls(args: argparse.Namespace) -> int:
    from analytics.page import render_calls
    from analytics.store import calls_on

    _, store = _open(args)
    if store is None:
        return 2
    try:
        with store.session_scope() as session:
            found = calls_on(
                session,
                args.date,
                escalated=True if args.escalated else None,
                agent=args.agent,
                queue=args.queue,
            )
            text = render_calls(found)
    finally:
        store.dispose()
    sys.stdout.write(text)
    return 0
