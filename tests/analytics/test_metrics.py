"""The figures of constructed timelines, each built to have one known answer."""

from __future__ import annotations

import pytest

from analytics.metrics import Rules, Segment, Utterance, call_figures, strongest_expressions


def segs(
    emotions: str, *, confidence: float = 0.9, channel: int | None = None, start: float = 0.0
) -> list[Segment]:
    """'NNA' -> neutral, neutral, angry; one 5 s segment per letter."""
    names = {"N": "neutral", "A": "angry", "H": "happy", "S": "sad"}
    return [
        Segment(start + i * 5.0, start + i * 5.0 + 5.0, names[c], confidence, channel)
        for i, c in enumerate(emotions)
    ]


RULES = Rules(min_confidence=0.38, negative_emotions=frozenset({"angry", "sad"}), escalation_margin=0.2)


def test_a_call_that_turns_angry_in_its_last_third_escalates() -> None:
    figures = call_figures(segs("NNNNNNNNAAAA"), RULES)
    assert figures.escalated
    assert figures.first_third_emotion == "neutral" and figures.last_third_emotion == "angry"
    assert figures.first_third_negative == 0.0 and figures.last_third_negative == 1.0
    assert figures.emotion_shares == {"angry": pytest.approx(1 / 3), "neutral": pytest.approx(2 / 3)}
    assert figures.dominant_emotion == "neutral"
    assert figures.analysed_s == 60.0 and figures.confident_s == 60.0
    assert figures.longest_negative_s == 20.0
    assert figures.changes_per_min == 1.0  # one change in one minute


def test_a_call_angry_from_start_to_end_does_not_escalate() -> None:
    figures = call_figures(segs("AAAANNNNAAAA"), RULES)
    assert not figures.escalated  # negative share 1.0 in both thirds: no rise
    assert figures.longest_negative_s == 20.0
    assert figures.changes_per_min == 2.0


def test_a_calm_call_does_not_escalate() -> None:
    figures = call_figures(segs("NHNHNHNHNHNH"), RULES)
    assert not figures.escalated
    assert figures.longest_negative_s == 0.0
    assert figures.changes_per_min == 11.0


def test_the_margin_is_exclusive() -> None:
    # 15 s thirds of 5 s segments: one angry segment of three in the last third = +1/3.
    calm_to_one_angry = segs("NNNNNNNNA")
    assert call_figures(calm_to_one_angry, RULES).escalated
    strict = Rules(min_confidence=0.38, negative_emotions=RULES.negative_emotions, escalation_margin=1 / 3)
    assert not call_figures(calm_to_one_angry, strict).escalated


def test_low_confidence_segments_count_for_nothing_and_break_streaks() -> None:
    timeline = [*segs("AA"), *segs("A", confidence=0.2, start=10.0), *segs("AAA", start=15.0)]
    figures = call_figures(timeline, RULES)
    assert figures.analysed_s == 30.0 and figures.confident_s == 25.0
    assert figures.longest_negative_s == 15.0
    assert figures.emotion_shares == {"angry": 1.0}


def test_which_emotions_are_negative_is_a_setting() -> None:
    sad_ending = segs("NNNNNNNNSSSS")
    assert call_figures(sad_ending, RULES).escalated
    only_angry = Rules(min_confidence=0.38, negative_emotions=frozenset({"angry"}), escalation_margin=0.2)
    assert not call_figures(sad_ending, only_angry).escalated


def test_channels_together_cover_time_and_count_changes_apart() -> None:
    agent = segs("NNNNNN", channel=0)
    customer = [*segs("AAA", channel=1), *segs("NNN", channel=1, start=15.0)]
    figures = call_figures([*agent, *customer], RULES)
    assert figures.analysed_s == 30.0  # the call's span, not the sum of both channels
    assert figures.confident_s == 60.0
    assert figures.changes_per_min == 2.0  # one change on the customer's side in 30 s
    assert figures.longest_negative_s == 15.0


def test_an_empty_timeline_has_no_answers() -> None:
    figures = call_figures([], RULES)
    assert figures.dominant_emotion is None and not figures.escalated and figures.analysed_s == 0.0


def test_prosody_scores_average_and_the_strongest_expressions_are_duration_weighted() -> None:
    utterances = [
        Utterance(0.0, 9.0, {"Anger": 0.9, "Calmness": 0.1, "Joy": 0.0}),
        Utterance(9.0, 10.0, {"Anger": 0.0, "Calmness": 0.9, "Joy": 0.5}),
    ]
    assert strongest_expressions(utterances, top=2) == {
        "Anger": pytest.approx(0.81),
        "Calmness": pytest.approx(0.18),
    }
    summaries = [
        dict.fromkeys(("frustration", "stress", "politeness", "hesitation", "urgency"), v) for v in (0.2, 0.4)
    ]
    figures = call_figures(segs("N"), RULES, prosody=summaries, utterances=utterances)
    assert figures.prosody["frustration"] == pytest.approx(0.3)
    assert list(figures.top_expressions)[:2] == ["Anger", "Calmness"]
