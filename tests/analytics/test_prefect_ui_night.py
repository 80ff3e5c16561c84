"""An operator's morning in the Prefect 3.8.8 UI, in headless Chromium (see `browser`).

A real night in which files failed: `valence-pipeline run` in a child process against a real
`prefect server start` (`prefect_ui`), SeaweedFS and the emulator, after an S3 notification
announced some of the night's objects (through the webhook's app). Then the flow run's page is
read as a person would, from what it renders: the Failed state and its "N of M files failed",
the summary one click away with its count in the card (and, opened, its picture and the files
that came without an event), the per-file table with failed files first and the reason in
view, and the pipeline's own log lines (which file failed and why), redacted.

`VALENCE_PIPELINE_UPDATE_SCREENSHOT=1` also saves the pictures the README shows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from fastapi.testclient import TestClient
from pydantic import SecretStr

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from notifications.webhook import create_app
from results_store.db import Store, upgrade
from tests.analytics.browser import DOCS, LAUNCH_ARGS, UPDATE_SCREENSHOTS, chromium_path
from tests.fixtures.emulator import LONG_RETENTION_S
from tests.notifications import samples
from tests.notifications.test_webhook import SECRET, _record_into, post
from tests.pipeline.helpers import pipeline_env

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("valence-pipeline"))
# Valsea has credits for two jobs: two of the four calls fail "insufficient_credits" (which two
# depends on the order the senders reach Valsea); the 2 s hang-up is rejected as too short.
CALLS = tuple(SampleRecording(f"in/call-{i}.wav", 12 + 3 * i) for i in range(4))
SAMPLES = (*CALLS, SampleRecording("in/hangup.wav", 2))
ANNOUNCED = ("in/call-0.wav", "in/call-1.wav")
"""An upload notification came for these; the other three arrived without one."""
PICTURES = "() => [...document.images].filter(i => i.src.startsWith('data:image/png;base64,') && i.complete && i.naturalWidth > 0).length"  # fmt: skip


def announce(s3_client: Any, bucket: str, database_url: str, keys: tuple[str, ...]) -> None:
    """One AWS S3 notification for `keys` (their versions and ETags), through the webhook's app."""
    records = []
    for key in keys:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        records.append(
            samples.s3_record(
                key, bucket=bucket, version_id=head["VersionId"], etag=head["ETag"].strip('"'), size=1
            )
        )
    store = Store(database_url)
    try:
        client = TestClient(create_app(SecretStr(SECRET), _record_into(store), suffixes=[".wav"]))
        assert post(client, samples.aws_s3(*records)).status_code == 200
    finally:
        store.dispose()


def run_night(env: dict[str, str], source: str, log_path: Path) -> None:
    """`valence-pipeline run` in its own process group (stopped with all it started)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [CLI, "run", "--source", source],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 1, log_path.read_text()[-4000:]  # files failed: the CLI says so too


def the_night(api: str) -> dict[str, Any]:
    answer = requests.post(
        f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"like_": "nightly-"}}}, timeout=30
    )
    answer.raise_for_status()
    [run] = answer.json()
    return dict(run)


def test_an_operator_sees_a_failed_night_in_the_prefect_ui(
    prefect_ui: str,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    executable = chromium_path()
    emu = make_emulator(time_scale=3600.0, retention_s=LONG_RETENTION_S, valsea_credits=2)
    upload_samples(s3_client, bucket, SAMPLES)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade(database_url)
    announce(s3_client, bucket, database_url, ANNOUNCED)
    env = {
        **os.environ,
        **pipeline_env(seaweedfs, emu, database_url, tmp_path / "dataset"),
        "PREFECT_API_URL": f"{prefect_ui}/api",
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    run_night(env, f"s3://{bucket}/in/", tmp_path / "night.log")
    # The nightly run is the reconciliation sweep: it processed all five and says how many no
    # event announced (the summary the CLI prints; the UI's below).
    unannounced = len(SAMPLES) - len(ANNOUNCED)
    assert (
        f"| new files that came without an upload event | {unannounced} |"
        in (tmp_path / "night.log").read_text()
    )
    night = the_night(f"{prefect_ui}/api")

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(tmp_path / name))
        if UPDATE_SCREENSHOTS:
            page.screenshot(path=str(DOCS / name))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            run_page = f"{prefect_ui}/runs/flow-run/{night['id']}"
            page.goto(run_page)

            # At a glance: the run is Failed, not a green Completed.
            header = page.locator(".page-heading")
            expect(header).to_contain_text(night["name"])
            expect(header.locator(".state-badge")).to_have_text("Failed")
            tabs = page.get_by_role("tablist")
            tabs.get_by_text("Details", exact=True).click()
            message = "2 of 5 files failed (2 completed, 1 rejected)"
            expect(page.get_by_text(message, exact=True)).to_be_visible()

            # One click: the Artifacts tab, whose summary card says how the night went.
            tabs.get_by_text("Artifacts", exact=True).click()
            summary_card = page.locator(".artifact-card", has_text="valence-pipeline-summary")
            expect(summary_card).to_contain_text(f"{message}, {night['name']}")
            expect(page.locator(".artifact-card", has_text="valence-pipeline-files")).to_be_visible()
            shot(page, "prefect-ui-night.png")

            # The summary, opened: its counts, the files no event announced, its picture.
            summary_card.click()
            content = page.locator(".markdown-renderer").last
            expect(content).to_contain_text("new files that came without an upload event")
            counts = dict(
                (row.locator("td").nth(0).inner_text().strip("* "), row.locator("td").nth(1).inner_text())
                for row in page.locator(".markdown-renderer table").first.locator("tbody tr").all()
            )
            assert counts["files seen"] == "5" and counts["failed"] == "2" and counts["completed"] == "2"
            assert counts["rejected"] == "1"
            assert counts["new files that came without an upload event"] == str(unannounced)
            page.wait_for_function(f"({PICTURES})() >= 1")
            alts = page.locator('img[src^="data:image/png;base64,"]').evaluate_all("i => i.map(x => x.alt)")
            assert alts[0].startswith("Emotions of ")

            # The per-file table: failed files first, the reason readable without scrolling sideways.
            page.goto(run_page)
            tabs.get_by_text("Artifacts", exact=True).click()
            page.locator(".artifact-card", has_text="valence-pipeline-files").click()
            rows = page.locator("table tbody tr")
            expect(rows).to_have_count(len(SAMPLES))
            table = [[cell.inner_text() for cell in row.locator("td").all()] for row in rows.all()]
            headers = page.locator("table thead th").all_inner_texts()
            assert headers[:3] == ["status", "reason", "file"]
            statuses = [r[0] for r in table]
            assert statuses == ["failed", "failed", "rejected", "completed", "completed"]
            # The table and the summary are the same facts.
            assert statuses.count("failed") == int(counts["failed"])
            assert statuses.count("completed") == int(counts["completed"])
            assert all("insufficient_credits" in r[1] for r in table[:2])
            assert table[2][1].startswith("too_short") and table[2][2].endswith("in/hangup.wav")
            failed_files = [r[2].rsplit("/", 1)[-1] for r in table[:2]]
            reason_box = rows.first.locator("td").nth(1).bounding_box()
            assert reason_box is not None and reason_box["x"] + reason_box["width"] <= 1400
            shot(page, "prefect-ui-files.png")

            # The Logs tab holds the pipeline's own lines: which file failed and why, as errors.
            page.goto(run_page)
            tabs.get_by_text("Logs", exact=True).click()
            last = page.locator(".log-row", has_text="Finished in state Failed(")
            for _ in range(20):  # the list loads page by page as it is scrolled
                if last.count():
                    break
                page.mouse.wheel(0, 20_000)
                page.wait_for_timeout(500)
            expect(last).to_be_visible()
            for name in failed_files:
                line = page.locator(".log-row", has_text=f"{name} failed: insufficient_credits")
                expect(line.locator(".log-level-label")).to_have_text("Error")
                expect(line.locator(".log-row__logger")).to_have_text("valence_pipeline.run")
            line.scroll_into_view_if_needed()
            shot(page, "prefect-ui-logs.png")
            rejected = page.locator(".log-row", has_text="rejected s3://").first
            expect(rejected).to_contain_text("hangup.wav: too_short")
            logs = page.locator(".logs").inner_text()
            for secret in (emu.valence_key, emu.valsea_key, seaweedfs.secret_key):
                assert secret not in logs
        finally:
            browser.close()
