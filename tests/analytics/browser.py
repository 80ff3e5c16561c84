"""Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright (never a
browser downloaded by `playwright install`). In CI a missing chromium fails the test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
UPDATE_SCREENSHOTS = os.environ.get("VALENCE_PIPELINE_UPDATE_SCREENSHOT") == "1"
"""Set to 1 to also save the screenshots the README shows (docs/*.png)."""
# --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start.
LAUNCH_ARGS = ["--no-sandbox"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "no chromium on PATH (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
