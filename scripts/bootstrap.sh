#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev extras. Idempotent: a second
# run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f .venv/.installed-* && touch "$stamp"
fi
