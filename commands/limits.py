"""`valence-pipeline limits show|set|clear`: the providers' rate limits every worker obeys."""

from __future__ import annotations

import argparse

WINDOWS = ("second", "minute", "hour", "day")


def register(sub: argparse._SubParsersAction) -> None:
    limits = sub.add_parser(
        "limits",
        help="show or steer the provider rate limits that every worker shares (in the results database)",
    )
    limits.add_argument("--database-url", help="default: VALENCE_PIPELINE_DATABASE_URL")
    action = limits.add_subparsers(dest="action", metavar="ACTION", required=True)
    action.add_parser(
        "show", help="each window: the settings' limit, an operator's, the provider's, in force"
    )
    steer = action.add_parser(
        "set", help="lower a provider's limits now (every worker obeys within a second)"
    )
    steer.add_argument("provider", choices=("valence", "valsea"))
    steer.add_argument("limits", nargs="+", metavar="WINDOW=N", help="e.g. minute=50 second=5")
    clear = action.add_parser("clear", help="drop an operator's limits: the settings' apply again")
    clear.add_argument("provider", choices=("valence", "valsea"))
    limits.set_defaults(func=_limits)


def _parse(pairs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        window, _, value = pair.partition("=")
        if window not in WINDOWS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"not WINDOW=N with WINDOW in {', '.join(WINDOWS)} and N >= 1: {pair!r}")
        out[window] = int(value)
    return out


def _limits(args: argparse.Namespace) -> int:
    from results_store.db import get_store
    from valence_pipeline.limits import DatabaseLedger, describe
    from valence_pipeline.settings import get_settings

    settings = get_settings()
    store = get_store(
        args.database_url or settings.database_url.get_secret_value(), settings.database_reconnect_wait_s
    )
    if args.action == "show":
        rows = describe(store)
        if not rows:
            print("no limits recorded yet: they are written when a run starts")
        for r in rows:
            extra = "".join(f", {k} {r[k]}" for k in ("operator", "server") if r[k] is not None)
            print(f"{r['provider']:8} {r['window']:7} {r['in force']:>7} (settings {r['configured']}{extra})")
        return 0
    ledger = DatabaseLedger(store, args.provider)
    if args.action == "set":
        ledger.set_operator_limits(_parse(args.limits))
    else:
        ledger.set_operator_limits({w: None for w in WINDOWS})
    print(f"{args.provider}: done; every worker follows within a second")
    return 0
