"""The pictures' markdown artifact, opened in the Prefect 3.8.8 UI in headless Chromium: the
UI renders inline `data:image/png;base64,` images, so the pictures show in the run's page
without any file server.

A `prefect server start` of its own (SQLite, UI on), stopped by the test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from analytics.pictures import publish_night
from localstack.seaweedfs import free_ports
from results_store.db import Store
from tests.analytics.browser import DOCS, LAUNCH_ARGS, UPDATE_SCREENSHOTS, chromium_path
from tests.analytics.night import DAY, build_night
from valence_pipeline.settings import Settings

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture
def prefect_ui(tmp_path: Path) -> Iterator[str]:
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_SERVER_UI_ENABLED": "true"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown stops its children too
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{base}/api/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_ui_shows_the_pictures_of_a_markdown_artifact(prefect_ui: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    url = build_night(tmp_path)
    store = Store(url)
    try:
        with store.session_scope() as session:
            settings = Settings(_env_file=None, output_uri=str(tmp_path / "dataset"))
            _, markdown = publish_night(session, dt.date.fromisoformat(DAY), settings)
    finally:
        store.dispose()
    answer = requests.post(
        f"{prefect_ui}/api/artifacts/",
        json={"key": "valence-pipeline-pictures", "type": "markdown", "data": markdown},
        timeout=30,
    )
    answer.raise_for_status()
    artifact_id = answer.json()["id"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            page.goto(f"{prefect_ui}/artifacts/artifact/{artifact_id}")
            images = page.locator('img[src^="data:image/png;base64,"]')
            images.first.wait_for(timeout=60_000)
            # The distribution and the two escalated calls' timelines, each decoded and drawn.
            page.wait_for_function(
                "() => [...document.images].filter(i => i.src.startsWith('data:image/png')"
                " && i.complete && i.naturalWidth > 0).length === 3",
                timeout=60_000,
            )
            alts = images.evaluate_all("imgs => imgs.map(i => i.alt)")
            assert alts[0] == "Emotions of 2026-11-21" and all("(escalated" in a for a in alts[1:])
            (tmp_path / "artifact.png").write_bytes(page.screenshot())
            if UPDATE_SCREENSHOTS:
                page.screenshot(path=str(DOCS / "prefect-artifact.png"))
        finally:
            browser.close()
