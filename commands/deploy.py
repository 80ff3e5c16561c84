"""`valence-pipeline deploy automations`: apply the project's automations to the Prefect server
at PREFECT_API_URL (the deployments themselves: `prefect deploy --all`) and name the scheduled
runs; `valence-pipeline deploy name-runs`: keep naming runs as they are created;
`valence-pipeline serve`: every deployment served from this one process instead."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="apply project configuration to the Prefect server")
    actions = deploy.add_subparsers(dest="deploy_action", metavar="ACTION", required=True)
    automations = actions.add_parser(
        "automations",
        help="create or update the automations in deployments/automations.yaml, and name the "
        "deployments' scheduled runs",
    )
    automations.add_argument("--file", type=Path, help="another automations file (default: the project's)")
    automations.set_defaults(func=_automations)
    names = actions.add_parser(
        "name-runs",
        help="keep naming this project's runs from the moment they are created (a UI quick run, "
        "an upload, the schedule); run it beside the server when workers run the flows",
    )
    names.add_argument(
        "--every",
        type=float,
        default=None,
        help="seconds between planning passes of the schedule (default 30; 0: none)",
    )
    names.set_defaults(func=_name_runs)

    serve = sub.add_parser(
        "serve", help="serve every deployment of prefect.yaml from this process (no work pool or worker)"
    )
    serve.add_argument(
        "--prefect-file", type=Path, default=Path("prefect.yaml"), help="default: ./prefect.yaml"
    )
    serve.add_argument("--limit", type=int, help="flow runs at once (default: no limit)")
    serve.set_defaults(func=_serve)


def _automations(args: argparse.Namespace) -> int:
    from deployments.automations import AUTOMATIONS_FILE, apply_automations

    for name, what in apply_automations(args.file or AUTOMATIONS_FILE):
        print(f"{what}: {name}")
    from flows.names import name_scheduled_runs

    # Right after `prefect deploy --all`: the nightly's upcoming runs get their names now,
    # not only when each starts (see flows/names.py).
    for old, new in name_scheduled_runs():
        print(f"named: {new} (was {old})")
    return 0


def _name_runs(args: argparse.Namespace) -> int:
    import threading

    from valence_pipeline.logs import setup_logging

    setup_logging()
    from flows.names import SERVE_EVERY_S, keep_naming

    # Until interrupted: the naming threads are daemons, so Ctrl-C or SIGTERM ends them with us.
    stop = threading.Event()
    keep_naming(stop, every_s=SERVE_EVERY_S if args.every is None else args.every)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    return 0


def _serve(args: argparse.Namespace) -> int:
    import sys

    if not args.prefect_file.is_file():
        print(
            f"valence-pipeline serve: no {args.prefect_file} (run from the repository root)", file=sys.stderr
        )
        return 2
    from valence_pipeline.logs import setup_logging

    setup_logging()
    from deployments.serve import serve_all

    serve_all(args.prefect_file, limit=args.limit)
    return 0
