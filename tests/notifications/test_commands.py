"""`valence-pipeline events ...` refuses to start without what it needs, at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from commands.main import main
from results_store import db


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from valence_pipeline.settings import get_settings

    url = f"sqlite:///{tmp_path / 'results.db'}"
    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", url)
    monkeypatch.delenv("VALENCE_PIPELINE_EVENTS_SECRET", raising=False)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_the_webhook_needs_a_secret(settings_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "webhook", "--port", "1"]) == 2
    assert "VALENCE_PIPELINE_EVENTS_SECRET" in capsys.readouterr().err


def test_both_refuse_a_database_behind_the_code(
    settings_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from valence_pipeline.settings import get_settings

    db.upgrade(settings_env, "0001")
    monkeypatch.setenv("VALENCE_PIPELINE_EVENTS_SECRET", "s")
    get_settings.cache_clear()
    assert main(["events", "webhook", "--port", "1"]) == 2
    assert "valence-pipeline db upgrade" in capsys.readouterr().err
    assert main(["events", "watch", "--source", "s3://bucket/prefix/"]) == 2
    assert "valence-pipeline db upgrade" in capsys.readouterr().err


def test_the_watcher_needs_an_s3_source(settings_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "watch", "--source", "/local/folder"]) == 2
    assert "not an s3:// URI" in capsys.readouterr().err
