"""containerd's view of the scheduler's labels: the neutral names plus containerd's filter syntax."""

from __future__ import annotations

from collections.abc import Mapping

from scheduler.labels import (
    ENV,
    GENERATION,
    LOG_DIR,
    LOG_MAX_BYTES,
    LOG_MAX_FILES,
    OWNER,
    OWNER_VALUE,
    PREFIX,
    REPLICA,
    SERVICE,
    SPEC_HASH,
    STOP_SIGNAL,
    owned,
)

__all__ = [
    "ENV",
    "GENERATION",
    "LOG_DIR",
    "LOG_MAX_BYTES",
    "LOG_MAX_FILES",
    "OWNER",
    "OWNER_VALUE",
    "PREFIX",
    "REPLICA",
    "SERVICE",
    "SPEC_HASH",
    "STOP_SIGNAL",
    "filters",
    "owned",
]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def filters(selector: Mapping[str, str]) -> list[str]:
    """List filters for containerd matching containers that carry every ``selector`` label.

    An empty value matches the presence of the key. The result is one filter (terms AND'd by commas);
    an empty selector gives no filter, i.e. everything.
    """
    terms = [
        f"labels.{_quote(key)}=={_quote(value)}" if value else f"labels.{_quote(key)}"
        for key, value in sorted(selector.items())
    ]
    return [",".join(terms)] if terms else []
