"""The night's report opened in headless Chromium (see `browser`): it renders offline, lists
the escalated calls and every picture has loaded."""

from __future__ import annotations

from pathlib import Path

from commands.main import main
from tests.analytics.browser import DOCS, LAUNCH_ARGS, UPDATE_SCREENSHOTS, chromium_path
from tests.analytics.night import DAY, build_night


def test_the_report_opens_with_its_pictures_in_headless_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    url = build_night(tmp_path)
    page_file = tmp_path / "night.html"
    assert main(["report", "--date", DAY, "--out", str(page_file), "--database-url", url]) == 0

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")

            escalated = page.locator("section.call.escalated")
            assert escalated.count() == 2
            assert sorted(escalated.evaluate_all("els => els.map(e => e.dataset.uri.split('/').pop())")) == [
                "c-1.wav",
                "c-2.wav",
            ]
            assert page.locator("#escalated-count").inner_text() == "2"
            widths = page.locator("img").evaluate_all(
                "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
            )
            assert len(widths) == 3 and all(w > 0 for w in widths)
            # Only the page itself (and its inline images) was asked for: nothing from a network.
            assert all(r.startswith(("file:", "data:")) for r in requests)

            shot = page.screenshot(full_page=True)
            (tmp_path / "report.png").write_bytes(shot)
            if UPDATE_SCREENSHOTS:
                page.set_viewport_size({"width": 1200, "height": 1750})  # down to the first timeline
                (DOCS / "report.png").write_bytes(page.screenshot(full_page=False))
        finally:
            browser.close()
