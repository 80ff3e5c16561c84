#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run the nightly job on local
# SeaweedFS + the provider emulator + SQLite + a Delta Lake dataset folder, and print where results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/valence-pipeline demo "$@"
