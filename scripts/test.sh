#!/usr/bin/env bash
# The test command (README): sets up .venv if needed, then runs the whole suite.
# PostgreSQL tests use VALENCE_PIPELINE_TEST_POSTGRES_URL (default: the local `test` database);
# with CI=true an unreachable PostgreSQL fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# The suite's own Prefect home, removed afterwards: never the user's ~/.prefect (its profiles
# could point at a real server; the suite would leave its files there).
PREFECT_HOME="$(mktemp -d -t valence-pipeline-tests-prefect.XXXXXX)"
export PREFECT_HOME
trap 'rm -rf "$PREFECT_HOME"' EXIT
.venv/bin/python -m pytest "$@"
