"""Dimensions of a call (date, queue, agent, ...) from its object key or its S3 metadata.

A pattern such as `calls/{date}/{queue}/{agent}/{call_id}.wav` names one path segment per
`{field}`; literal parts must match exactly. S3 user metadata (`x-amz-meta-queue: sales`)
gives dimensions too and wins over the key, because whoever uploaded the object set it on
purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a key pattern; a `{field}` matches one path segment."""
    parts: list[str] = []
    pos = 0
    names: set[str] = set()
    for match in _FIELD.finditer(pattern):
        name = match.group(1)
        if name in names:
            raise ValueError(f"field {{{name}}} appears twice in {pattern!r}")
        names.add(name)
        parts.append(re.escape(pattern[pos : match.start()]))
        parts.append(f"(?P<{name}>[^/]+?)")
        pos = match.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(parts) + "$")


def from_key(key: str, pattern: str | None) -> dict[str, str]:
    """The dimensions a key yields under `pattern` ({} when it does not match)."""
    if not pattern:
        return {}
    match = compile_pattern(pattern).match(key)
    return dict(match.groupdict()) if match else {}


def dimensions(key: str, pattern: str | None, metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """Key dimensions overlaid with S3 user metadata (names lower-cased, as S3 returns them)."""
    out = from_key(key, pattern)
    for name, value in (metadata or {}).items():
        out[name.lower()] = str(value)
    return out


def object_metadata(s3: Any, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
    """The user metadata of one object version (a HEAD request; no body is read)."""
    kwargs = {"Bucket": bucket, "Key": key}
    if version_id and version_id != "null":
        kwargs["VersionId"] = version_id
    return dict(s3.head_object(**kwargs).get("Metadata") or {})
