"""`valence-pipeline calls` and `report` against a results database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from commands.main import main
from tests.analytics.night import DAY, build_night


def test_calls_lists_the_night_with_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = build_night(tmp_path)
    assert main(["calls", "--date", DAY, "--database-url", url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["recording", "queue", "agent"]
    assert lines[-1] == "3 calls"
    c1 = next(line for line in lines if "c-1.wav" in line)
    assert "neutral→angry" in c1 and "0%→100%" in c1 and c1.endswith("call")
    c2 = next(line for line in lines if "c-2.wav" in line)
    assert c2.endswith("call,customer")
    assert next(line for line in lines if "c-3.wav" in line).endswith("-")

    assert main(["calls", "--date", DAY, "--escalated", "--database-url", url]) == 0
    escalated = capsys.readouterr().out
    assert "c-1.wav" in escalated and "c-2.wav" in escalated and "c-3.wav" not in escalated
    assert main(["calls", "--date", DAY, "--agent", "ann", "--queue", "sales", "--database-url", url]) == 0
    assert "c-2.wav" not in capsys.readouterr().out
    assert main(["calls", "--date", "2026-11-22", "--database-url", url]) == 0
    assert capsys.readouterr().out == "no calls\n"


def test_report_is_one_self_contained_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = build_night(tmp_path)
    out = tmp_path / "night.html"
    assert main(["report", "--date", DAY, "--out", str(out), "--database-url", url]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    # Nothing to fetch: every src is inline, no stylesheet or script link.
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page and "http" not in page
    assert page.count('<section class="call escalated"') == 2
    assert 'id="escalated-count">2<' in page and 'id="failures-count">1<' in page
    assert "too_short: 2.0 s &lt; 4.0 s" in page
    assert "channel 1 (customer)" in page


def test_an_unmigrated_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["calls", "--date", DAY, "--database-url", url]) == 2
    assert "valence-pipeline db upgrade" in capsys.readouterr().err
