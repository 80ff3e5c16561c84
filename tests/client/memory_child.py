"""Child process of the bounded-memory test: upload one big file with both clients and report
this process's peak resident memory (`ru_maxrss`), so the parent's memory does not count.

    python -m tests.client.memory_child BASE_URL FILE     (keys in VALENCE_API_KEY / VALSEA_API_KEY)
"""

from __future__ import annotations

import io
import json
import resource
import sys
from pathlib import Path

from valence_client import ValenceClient, ValseaClient, WindowRateLimiter


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mib() -> float | None:
    """The kernel's high-water mark of this process's RSS, as a cross-check."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class OneWayStream(io.RawIOBase):
    """A non-seekable reader over the file, like an S3 StreamingBody."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()
        super().close()


def main(base_url: str, path: Path) -> None:
    size = path.stat().st_size
    valence = ValenceClient(base_url=base_url, show_progress=False, limiter=WindowRateLimiter(), timeout=300)
    valsea = ValseaClient(base_url=base_url, limiter=WindowRateLimiter(), timeout=300)
    report: dict[str, object] = {"size_mib": size / 2**20, "baseline_mib": peak_rss_mib()}
    report["request_id"] = valence.asynch.upload(str(path))
    report["after_path_upload_mib"] = peak_rss_mib()
    with OneWayStream(path) as stream:
        report["stream_request_id"] = valence.asynch.upload(stream, size=size, file_name=path.name)
    report["after_stream_upload_mib"] = peak_rss_mib()
    report["job_id"] = valsea.submit(str(path)).job_id
    report["peak_mib"] = peak_rss_mib()
    report["vm_hwm_mib"] = vm_hwm_mib()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
