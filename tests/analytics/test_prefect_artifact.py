"""The pictures' markdown artifact, opened in the Prefect 3.8.8 UI in headless Chromium: the
UI renders inline `data:image/png;base64,` images, so the pictures show in the run's page
without any file server.

A `prefect server start` of its own (`prefect_ui`: SQLite, UI on), stopped by the test.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import requests

from analytics.pictures import publish_night
from results_store.db import Store
from tests.analytics.browser import DOCS, LAUNCH_ARGS, UPDATE_SCREENSHOTS, chromium_path
from tests.analytics.night import DAY, build_night
from valence_pipeline.settings import Settings


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
