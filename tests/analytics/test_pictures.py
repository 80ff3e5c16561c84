"""Pictures of a night: real PNGs, written beside the dataset (local and S3), inline in markdown."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import pytest

from analytics import compute_and_store
from analytics.pictures import night_pictures, publish_night
from tests.analytics.calls import CALM_CALL, NEUTRAL_THEN_ANGRY, PROCESSED, prosody, store_call
from valence_pipeline.settings import Settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    from matplotlib import image

    height, width = image.imread(io.BytesIO(png)).shape[:2]
    return width, height


def _night(store: Any, settings: Settings) -> None:
    utterances = prosody(0.6, [(0.0, 20.0, {"Anger": 0.2, "Calmness": 0.7}), (40.0, 60.0, {"Anger": 0.9})])
    with store.session_scope() as s:
        split = store_call(
            s, "calls/2026-11-21/sales/ann/split.wav", {0: CALM_CALL, 1: NEUTRAL_THEN_ANGRY}, {1: utterances},
            n=1, channels=2,
        )  # fmt: skip
        calm = store_call(s, "calls/2026-11-21/sales/bob/calm.wav", {None: CALM_CALL}, n=2)
        for rid in (split, calm):
            compute_and_store(s, rid, settings)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_night_is_drawn_and_written_beside_the_dataset(
    store: Any, where: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    if where == "s3":
        request.getfixturevalue("s3_env")
        output = f"s3://{request.getfixturevalue('bucket')}/dataset"
    else:
        output = str(tmp_path / "dataset")
    settings = Settings(_env_file=None, output_uri=output)
    _night(store, settings)
    with store.session_scope() as s:
        uris, markdown = publish_night(s, PROCESSED.date(), settings)
    names = [u.rsplit("/", 1)[1] for u in uris]
    assert names == ["distribution.png", "1-split.png", "2-calm.png"]  # escalated calls first
    assert all("/pictures/2026-11-21/" in u for u in uris)
    from results_store.storage import open_location

    location = open_location(output)
    stored = [location.read_bytes(f"pictures/2026-11-21/{name}") for name in names]
    assert all(png.startswith(PNG_MAGIC) for png in stored)
    # Split calls are stacked: two channel lanes make a taller picture than one.
    assert _size(stored[1])[1] > _size(stored[2])[1]

    # The artifact shows the distribution and the escalated call inline, not the calm one.
    images = re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert [alt for alt, _ in images] == [
        "Emotions of 2026-11-21",
        "s3://calls/calls/2026-11-21/sales/ann/split.wav (escalated: call, customer)",
    ]
    assert base64.b64decode(images[1][1]) == stored[1]
    assert "1 escalated" in markdown and "2 calls" in markdown


def test_only_escalated_calls_can_be_drawn(store: Any) -> None:
    settings = Settings(_env_file=None)
    _night(store, settings)
    with store.session_scope() as s:
        pictures = night_pictures(s, PROCESSED.date(), settings, only_escalated=True)
    assert [p.name for p in pictures] == ["distribution.png", "1-split.png"]


def test_the_nightly_summary_draws_the_day_up_to_the_configured_number_of_calls(tmp_path: Any) -> None:
    """`tasks.dataset_child.pictures_markdown`, what the nightly run puts below its summary (drawn in
    its dataset child: `draw_pictures`)."""
    import datetime as dt

    from tasks.dataset_child import pictures_markdown
    from tests.analytics.night import DAY, build_night
    from valence_pipeline.runtime import Runtime, reset_runtime

    url = build_night(tmp_path)  # three calls on DAY, two escalated
    day = dt.date.fromisoformat(DAY)

    def drawn(max_calls: int, on: dt.date = day) -> str:
        settings = Settings(
            _env_file=None, database_url=url, output_uri=str(tmp_path / "out"), pictures_max_calls=max_calls
        )
        reset_runtime(Runtime(settings))
        try:
            return pictures_markdown(on)
        finally:
            reset_runtime()

    shown = drawn(3)
    assert len(re.findall(r"!\[[^\]]*\]\(data:image/png;base64,", shown)) == 3  # distribution + 2
    assert (tmp_path / "out" / "pictures" / DAY / "distribution.png").is_file()
    # Only what it shows is drawn (the night does not wait for every call's timeline); the
    # heading still counts every call.
    assert len(list((tmp_path / "out" / "pictures" / DAY).iterdir())) == 3
    assert f"Emotions of {DAY}: 3 calls, 2 escalated" in shown
    assert (
        drawn(2) == f"_3 calls on {DAY}: more than VALENCE_PIPELINE_PICTURES_MAX_CALLS (2), not drawn here._"
    )
    assert drawn(3, day + dt.timedelta(days=1)) == ""  # a day without calls: no pictures


def test_a_night_with_too_many_calls_to_draw_does_not_load_the_drawing_library(tmp_path: Any) -> None:
    """matplotlib is ~20 MiB of the dataset child: a night over `pictures_max_calls` must not
    carry it (a fresh interpreter, so what the test session imported does not count)."""
    import json
    import subprocess
    import sys

    from tests.analytics.night import DAY, build_night

    url = build_night(tmp_path)  # three calls on DAY
    code = f"""
import datetime as dt, json, sys
from tasks.dataset_child import pictures_markdown
from valence_pipeline.runtime import Runtime, reset_runtime
from valence_pipeline.settings import Settings
settings = Settings(_env_file=None, database_url={url!r}, output_uri={str(tmp_path / "out")!r}, pictures_max_calls=%d)
reset_runtime(Runtime(settings))
shown = pictures_markdown(dt.date.fromisoformat({DAY!r}))
print(json.dumps({{"shown": shown, "matplotlib": "matplotlib" in sys.modules}}))
"""

    def child(max_calls: int) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", code % max_calls], capture_output=True, text=True, check=True, timeout=120
        )
        answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return answer

    over = child(2)
    assert over["shown"].startswith("_3 calls on") and over["matplotlib"] is False
    drawn = child(3)
    assert "data:image/png" in drawn["shown"] and drawn["matplotlib"] is True


def test_publishing_a_night_reads_its_calls_once(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pictures and the artifact's heading share one read of the day's calls (the
    `report` command draws every call of a day, however many)."""
    import datetime as dt

    import analytics.pictures as pictures
    from results_store import db
    from tests.analytics.night import DAY, build_night

    url = build_night(tmp_path)
    reads: list[dt.date] = []
    real = pictures.calls_on

    def counted(session: Any, day: dt.date, **kw: Any) -> Any:
        reads.append(day)
        return real(session, day, **kw)

    monkeypatch.setattr(pictures, "calls_on", counted)
    settings = Settings(_env_file=None, database_url=url, output_uri=str(tmp_path / "out"))
    store = db.Store(url)
    try:
        with store.session_scope() as s:
            _, markdown = pictures.publish_night(s, dt.date.fromisoformat(DAY), settings)
    finally:
        store.dispose()
    assert f"Emotions of {DAY}: 3 calls, 2 escalated" in markdown
    assert reads == [dt.date.fromisoformat(DAY)]
