"""`valence-pipeline stream FILE`: send a recording to the streaming API as if it were live and
print each prediction as it arrives (a small tool for trying the API; settings as everywhere:
`VALENCE_API_KEY`, `VALENCE_WEBSOCKET_URL`, `VALENCE_PIPELINE_MIN_CONFIDENCE`, ...)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TextIO

from valence_client import ReconnectPolicy, ValenceSDKException
from valence_client.models import format_clock
from valence_client.stream_protocol import WINDOW_SECONDS, PredictionEvent
from valence_pipeline.providers import valence_client
from valence_pipeline.settings import get_settings

RECONNECT = ReconnectPolicy(initial_s=0.5, max_s=10.0, max_attempts=8)
"""A person is watching: a few attempts over about a minute, then say so."""


class PredictionPrinter:
    """Prints one line per prediction and counts them (callbacks arrive on one thread)."""

    def __init__(self, out: TextIO, min_confidence: float) -> None:
        self.out = out
        self.min_confidence = min_confidence
        self.count = 0
        self._arrived = threading.Condition()

    def __call__(self, event: PredictionEvent) -> None:
        start = event.start_time if event.start_time is not None else self.count * WINDOW_SECONDS
        end = event.end_time if event.end_time is not None else start + WINDOW_SECONDS
        scores = "  ".join(f"{name} {score:.2f}" for name, score in sorted(event.all_predictions.items()))
        low = (
            f"  (below {self.min_confidence:g}: uncertain)" if event.confidence < self.min_confidence else ""
        )
        print(
            f"{format_clock(start)}-{format_clock(end)}  {event.main_emotion:<10} {event.confidence:.2f}  [{scores}]{low}",
            file=self.out,
            flush=True,
        )
        with self._arrived:
            self.count += 1
            self._arrived.notify_all()

    def wait_for(self, n: int, timeout_s: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: self.count >= n, timeout_s)


def run_stream(
    path: Path,
    *,
    pace: float,
    model: str | None,
    wait_s: float,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Exit code 0 when a prediction arrived for every full 5 s of the file, else 1 (2: bad input)."""
    out, err = out or sys.stdout, err or sys.stderr
    if not path.is_file():  # before any connection
        print(f"valence-pipeline stream: no such audio file: {path}", file=err)
        return 2
    settings = get_settings()
    try:
        client = valence_client(settings)
        stream = client.streaming.connect(model=model or settings.valence_model, reconnect=RECONNECT)
    except ValenceSDKException as exc:
        print(f"valence-pipeline stream: {exc}", file=err)
        return 2
    printer = PredictionPrinter(out, settings.min_confidence)
    stream.on_prediction(printer)
    stream.on_connected(lambda e: print(f"connected: session {e.session_id}", file=err, flush=True))
    stream.on_error(lambda e: print(f"error: {e.error}", file=err, flush=True))
    stream.on_warning(lambda e: print(f"warning: {e.message}", file=err, flush=True))
    try:
        stream.connect()
        report = stream.stream_wav(path, pace=pace)
        stream.flush(wait_s)
        expected = int(report.audio_s // WINDOW_SECONDS)
        printer.wait_for(expected, wait_s)
    except ValenceSDKException as exc:
        print(f"valence-pipeline stream: {exc}", file=err)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 1
    finally:
        stream.disconnect()
    print(
        f"{printer.count} of {expected} predictions for {report.audio_s:.1f} s of audio "
        f"(one per {WINDOW_SECONDS:g} s; a shorter tail gets none)",
        file=err,
    )
    return 0 if printer.count >= expected else 1
