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
