"""Child process of the pipeline memory test: run `process_recordings` on the given objects and
report this process's peak resident memory (`ru_maxrss`, VmHWM as a cross-check).

    python -m tests.pipeline.memory_child s3://bucket/key [...]   (configured through the environment)

The Prefect API is another process's (`PREFECT_API_URL`), so its memory does not count here.
"""

from __future__ import annotations

import json
import sys

from tests.client.memory_child import peak_rss_mib, vm_hwm_mib


def main(uris: list[str]) -> None:
    from flows.ingest import process_recordings, run_to_result

    baseline = peak_rss_mib()  # the interpreter with the pipeline imported, before any work
    result = run_to_result(process_recordings, uris=uris, trigger="manual")
    report = {
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "vm_hwm_mib": vm_hwm_mib(),
        "result": {k: v for k, v in result.items() if k != "summary"},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
