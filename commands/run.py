"""`valence-pipeline run`, `demo` and `stream` (import-light; the work is in handlers)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the nightly flow once against the configured services")
    run.add_argument("--source", action="append", required=True, help="s3://bucket/prefix (repeatable)")
    run.add_argument("--since", type=datetime.fromisoformat, help="only objects modified since (ISO 8601)")
    run.add_argument("--max-files", type=int)
    run.add_argument("--max-audio-hours", type=float)
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="everything local: SeaweedFS, the emulator, SQLite, Parquet")
    demo.add_argument("--workdir", type=Path, default=Path("demo-output"), help="where data and results go")
    demo.add_argument("--time-scale", type=float, default=600.0, help="emulator clock speed-up")
    demo.set_defaults(func=_demo)

    stream = sub.add_parser(
        "stream", help="stream a recording to the Valence streaming API; print predictions as they arrive"
    )
    stream.add_argument("file", type=Path, help="audio file (WAV, FLAC, ...; downmixed to mono)")
    stream.add_argument(
        "--pace", type=float, default=1.0, help="1 = real time (default), 2 = twice as fast, 0 = no pacing"
    )
    stream.add_argument(
        "--model", choices=("4emotions", "7emotions"), help="default: VALENCE_PIPELINE_VALENCE_MODEL"
    )
    stream.add_argument(
        "--wait-s", type=float, default=30.0, help="how long to wait for the last predictions (default 30)"
    )
    stream.set_defaults(func=_stream)


def _run(args: argparse.Namespace) -> int:
    from results_store import db
    from valence_pipeline.logs import setup_logging
    from valence_pipeline.settings import get_settings

    setup_logging()
    try:  # before the flow call starts Prefect's temporary server: a refusal comes at once
        db.create_or_check(get_settings().database_url.get_secret_value())
    except db.SchemaError as exc:
        print(f"valence-pipeline run: {exc}", file=sys.stderr)
        return 2
    from flows.ingest import nightly_ingest, run_to_result
    from flows.temporary_server import temporary_prefect_server

    with temporary_prefect_server():  # with no PREFECT_API_URL: one that dies with this process
        result = run_to_result(
            nightly_ingest,
            source=args.source,
            since=args.since,
            max_files=args.max_files,
            max_audio_hours=args.max_audio_hours,
            trigger="manual",
        )
    print(result["summary"])
    return 0 if result["failed"] == 0 else 1


def _demo(args: argparse.Namespace) -> int:
    from localstack.demo import run_demo

    return run_demo(args.workdir.resolve(), time_scale=args.time_scale)


def _stream(args: argparse.Namespace) -> int:
    from commands.stream import run_stream

    return run_stream(args.file, pace=args.pace, model=args.model, wait_s=args.wait_s)
