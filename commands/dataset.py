"""`valence-pipeline dataset show|history TABLE`: the dataset's Delta tables, at any version.

Import-light: only argparse here; deltalake loads inside the handlers. The dataset root is
`Settings.output_uri` unless `--output-uri` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

TABLES = ("recordings", "emotion_segments", "prosody_summary", "prosody_utterances")


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("dataset", help="read the results dataset (Delta Lake tables)")
    actions = group.add_subparsers(dest="dataset_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print a table's rows (tab-separated), now or as of a version")
    show.add_argument(
        "table", help=f"one of {', '.join(TABLES)} (or any table declared in results_store.models)"
    )
    show.add_argument("--as-of-version", type=int, help="read this table version instead of the newest")
    show.add_argument("--columns", help="comma-separated columns (default: all)")
    show.add_argument("--limit", type=int, default=50, help="rows to print (default 50; 0 = all)")
    _output_uri(show)
    show.set_defaults(func=_show)
    export = actions.add_parser("export", help="commit stored recordings to the dataset (what runs do)")
    export.add_argument("--run-id", required=True)
    export.add_argument("--recordings", help="comma-separated recording ids (default: every stored one)")
    export.set_defaults(func=_export)
    compact = actions.add_parser("compact", help="merge small files and vacuum (what the nightly run does)")
    compact.add_argument("--run-id", required=True)
    compact.set_defaults(func=_compact)
    worker = actions.add_parser(
        "worker", help="answer export/compact requests, one JSON line each on stdin (a run's dataset child)"
    )
    worker.set_defaults(func=_worker)
    history = actions.add_parser("history", help="a table's versions: when, which operation, which run")
    history.add_argument("table")
    _output_uri(history)
    history.set_defaults(func=_history)


def _export(args: argparse.Namespace) -> int:
    import json

    from tasks.dataset_child import export_now
    from valence_pipeline.logs import setup_logging

    setup_logging("WARNING")
    ids = [int(i) for i in args.recordings.split(",") if i] if args.recordings is not None else None
    print(json.dumps(export_now(args.run_id, ids)))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from tasks.dataset_child import compact_now
    from valence_pipeline.logs import setup_logging

    setup_logging("WARNING")
    print(compact_now(args.run_id))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from tasks.dataset_child import serve_requests
    from valence_pipeline.logs import setup_logging

    setup_logging("WARNING")
    return serve_requests(sys.stdin, sys.stdout)


def _output_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-uri", help="dataset root (default: VALENCE_PIPELINE_OUTPUT_URI)")


def _root(args: argparse.Namespace) -> str:
    if args.output_uri:
        return str(args.output_uri)
    from valence_pipeline.settings import get_settings

    return get_settings().output_uri


def _show(args: argparse.Namespace) -> int:
    from results_store import dataset

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        data = dataset.read_table(_root(args), args.table, version=args.as_of_version, columns=columns)
    except (ValueError, KeyError, dataset.DatasetError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    version = (
        args.as_of_version
        if args.as_of_version is not None
        else dataset.table_version(_root(args), args.table)
    )
    print(f"# {args.table} version {version if version is not None else '-'}: {data.num_rows} row(s)")
    print("\t".join(data.column_names))
    shown = data if not args.limit else data.slice(0, args.limit)
    for row in shown.to_pylist():
        print("\t".join(_cell(v) for v in row.values()))
    return 0


def _history(args: argparse.Namespace) -> int:
    from results_store import dataset

    try:
        entries = dataset.history(_root(args), args.table)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for entry in entries:
        run = entry.get("valence_pipeline.run_id", "-")
        when = dt.datetime.fromtimestamp(int(entry.get("timestamp", 0)) / 1000, dt.UTC)
        print(f"{entry.get('version')}\t{when:%Y-%m-%dT%H:%M:%SZ}\t{entry.get('operation')}\trun {run}")
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # a map column arrives as (key, value) pairs
        return ",".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value)
    return str(value)
