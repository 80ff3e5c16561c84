"""`valence-pipeline notify s3://bucket/key ...`: tell the `on-upload` deployment about new objects
(one upload event, so one run, for all the URIs given)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    notify = sub.add_parser(
        "notify", help="emit the upload event for objects (the on-upload deployment processes them)"
    )
    notify.add_argument("uris", nargs="+", metavar="s3://bucket/key")
    notify.add_argument("--version-id", help="the object version (only with one URI)")
    notify.set_defaults(func=_notify)


def _notify(args: argparse.Namespace) -> int:
    from deployments.events import batch_of_uris, emit_upload_events

    if args.version_id and len(args.uris) > 1:
        raise SystemExit("--version-id names the version of one object; give one URI with it")
    bad = [u for u in args.uris if not u.startswith("s3://") or u.endswith("/")]
    if bad:
        raise SystemExit(f"not an object URI (s3://bucket/key): {', '.join(bad)}")
    [event_id] = emit_upload_events([batch_of_uris(args.uris, args.version_id)])
    for uri in args.uris:  # one event (one run) for all of them
        print(f"sent upload event {event_id} for {uri}")
    return 0
