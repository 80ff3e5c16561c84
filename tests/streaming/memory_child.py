"""Child process of the slow-server memory test: stream far more audio than the send queue may
hold to a server that has stopped reading, and report this process's peak RSS and the queue's
fill level as seen after every `send_audio`.

    python -m tests.streaming.memory_child WS_URL MAX_QUEUE_BYTES AUDIO_MIB   (key in VALENCE_API_KEY)
"""

from __future__ import annotations

import json
import os
import sys

from tests.client.memory_child import peak_rss_mib, vm_hwm_mib
from tests.streaming.helpers import speech_pcm
from valence_client import ReconnectPolicy, SendQueueFullError, StreamConnection

MiB = 1024 * 1024


def main(url: str, max_queue_bytes: int, audio_mib: int) -> None:
    stream = StreamConnection(
        url,
        os.environ["VALENCE_API_KEY"],
        max_queue_bytes=max_queue_bytes,
        reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.5),
    )
    stream.connect()
    chunk = speech_pcm(0.1, seed=11)  # 8,820 bytes, as a microphone callback would hand over
    report: dict[str, object] = {"baseline_mib": peak_rss_mib()}
    produced, fullest = 0, 0
    while produced < audio_mib * MiB:
        stream.send_audio(chunk)  # never blocks: drops the oldest audio when full
        produced += len(chunk)
        fullest = max(fullest, stream.stats["queued_bytes"])
    report["producer_blocked"] = False
    try:  # the waiting policy: room never comes, so it gives up instead of growing
        stream.stream_wav([chunk] * 1000, pace=0, timeout=0.5)
    except SendQueueFullError:
        report["producer_blocked"] = True
    report |= {
        "produced_bytes": produced,
        "fullest_seen_bytes": fullest,
        "peak_mib": peak_rss_mib(),
        "vm_hwm_mib": vm_hwm_mib(),
        **stream.stats,
    }
    stream.disconnect()  # must not hang on the write the server never takes
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
