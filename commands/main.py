"""`valence-pipeline` console script.

Each room registers its own sub-commands from a small, import-light module (argparse only at
import time; heavy imports such as Prefect happen inside the handler), so `valence-pipeline
emulator` starts listening quickly and `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules exposing `register(subparsers)`; each adds parsers with `set_defaults(func=handler)`,
# where `handler(args) -> int` is the exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "emulator.cli",
    "commands.run",
    "commands.db",
    "commands.notify",
    "commands.limits",
    "commands.dataset",
    "commands.analytics",
    "commands.events",
    "commands.deploy",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valence-pipeline",
        description="Emotion analytics from recorded conversations (Valence + Valsea) on Prefect.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


def entry() -> None:
    """The console script: a flow process starts with its malloc tuning (glibc reads it only
    at exec, so the command starts over once with it), then runs the command."""
    from valence_pipeline.processes import restart_with_malloc_tunables

    restart_with_malloc_tunables()
    sys.exit(main())


if __name__ == "__main__":
    entry()
