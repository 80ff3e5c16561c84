"""`valence-pipeline events webhook|watch`: turn uploads into upload events (import-light).

Both record each object version once in the results database and send the notices on in
batches (`VALENCE_PIPELINE_EVENTS_BATCH_MAX_OBJECTS` / `..._MAX_WAIT_S`) as the
`valence-pipeline.recording.uploaded` event, which the `on-upload` deployment runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from notifications.batching import Dispatcher
    from notifications.ledger import UploadBatch
    from results_store.db import Store

log = logging.getLogger("valence_pipeline.events")


def register(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser("events", help="receive or watch for uploads and emit upload events")
    actions = events.add_subparsers(dest="events_action", metavar="ACTION", required=True)
    webhook = actions.add_parser(
        "webhook", help="receive S3 event notifications (AWS S3, SNS, EventBridge, MinIO, Ceph)"
    )
    webhook.add_argument("--host", default="127.0.0.1")
    webhook.add_argument("--port", type=int, default=8787)
    webhook.set_defaults(func=_webhook)
    watch = actions.add_parser("watch", help="list a store that sends no notifications, every S seconds")
    watch.add_argument("--source", required=True, help="s3://bucket/prefix")
    watch.add_argument("--interval", type=float, default=30.0, help="seconds between listings (default 30)")
    watch.add_argument(
        "--announce-existing",
        action="store_true",
        help="on the first scan, announce the objects already there too (default: leave them to the nightly run)",
    )
    watch.set_defaults(func=_watch)


def _open_store() -> Store | None:
    from results_store import db
    from valence_pipeline.settings import get_settings

    try:
        settings = get_settings()
        return db.Store(
            settings.database_url.get_secret_value(), reconnect_wait_s=settings.database_reconnect_wait_s
        )
    except db.SchemaError as exc:
        print(f"valence-pipeline events: {exc}", file=sys.stderr)
        return None


def _dispatcher(store: Store) -> Dispatcher:
    from deployments.events import emit_upload_events
    from notifications.batching import Dispatcher
    from valence_pipeline.settings import get_settings

    def emit(batch: UploadBatch) -> None:
        emit_upload_events([batch])

    settings = get_settings()
    return Dispatcher(
        store,
        emit,
        max_objects=settings.events_batch_max_objects,
        max_wait_s=settings.events_batch_max_wait_s,
    )


def _dispatch_until(dispatcher: Dispatcher, stop: threading.Event, every_s: float = 1.0) -> None:
    while not stop.wait(every_s):
        try:
            dispatcher.tick()
        except Exception:  # the event server or database is away: next tick retries
            log.exception("sending upload events failed; retrying")


def _webhook(args: argparse.Namespace) -> int:
    from valence_pipeline.logs import setup_logging
    from valence_pipeline.settings import get_settings

    setup_logging()
    settings = get_settings()
    if settings.events_secret is None or not settings.events_secret.get_secret_value():
        print("valence-pipeline events webhook: set VALENCE_PIPELINE_EVENTS_SECRET", file=sys.stderr)
        return 2
    store = _open_store()
    if store is None:
        return 2
    import uvicorn

    from notifications import ledger
    from notifications.messages import ObjectNotice
    from notifications.webhook import create_app

    def record(notices: list[ObjectNotice]) -> int:
        with store.session_scope() as s:
            return ledger.record_notices(s, notices)

    dispatcher = _dispatcher(store)
    stop = threading.Event()
    sender = threading.Thread(
        target=_dispatch_until, args=(dispatcher, stop), name="upload-events", daemon=True
    )
    sender.start()
    app = create_app(
        settings.events_secret,
        record,
        suffixes=settings.audio_suffixes,
        sns_topic_arns=settings.events_sns_topic_arns,
    )
    # No access log: it would print query strings, and the secret may be one.
    server = _server_class()(
        uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    )

    def _stop(_signum: int, _frame: Any) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.run()
    finally:
        stop.set()
        sender.join(timeout=30)
        _flush(dispatcher)
        store.dispose()
    return 0


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT once it has stopped, which would kill the process
        before the waiting notices are sent; here the command's own handlers stop it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


def _watch(args: argparse.Namespace) -> int:
    from valence_pipeline.logs import setup_logging
    from valence_pipeline.s3 import make_s3_client, parse_s3_uri
    from valence_pipeline.settings import get_settings

    setup_logging()
    try:
        parse_s3_uri(args.source)
    except ValueError as exc:
        print(f"valence-pipeline events watch: {exc}", file=sys.stderr)
        return 2
    store = _open_store()
    if store is None:
        return 2
    from notifications.watcher import Watcher

    settings = get_settings()
    watcher = Watcher(
        store,
        make_s3_client(),
        args.source,
        settings.audio_suffixes,
        lookback_s=settings.events_watch_lookback_s,
        announce_existing=args.announce_existing,
    )
    dispatcher = _dispatcher(store)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("watching %s every %g s", args.source, args.interval)
    try:
        while not stop.is_set():
            try:
                watcher.scan()
                dispatcher.tick()
            except Exception:  # a listing or send failed: the next scan retries
                log.exception("scan of %s failed; retrying in %g s", args.source, args.interval)
            stop.wait(args.interval)
    finally:
        _flush(dispatcher)
        store.dispose()
    return 0


def _flush(dispatcher: Dispatcher) -> None:
    """On the way out, send what waits rather than leave it for the next start."""
    try:
        dispatcher.tick(flush=True)
    except Exception:  # left in the database: the next start sends it
        log.exception("upload events not sent on shutdown; they go out on the next start")
