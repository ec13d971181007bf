"""Labels the scheduler puts on the containers it creates: runtime-neutral names.

Ownership and identity travel with the container, so the scheduler can rebuild its view of the
world from the runtime alone after a restart. Every key has the ``io.scheduler/`` prefix; each
constant says how its value is encoded. The containerd runtime turns them into its own label
filters (``runtime/containerd/labels.py``); the orchestrator, supervisor and reconciler read and
write them without knowing which runtime runs the containers.
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "io.scheduler/"
"""Prefix of every label the scheduler sets."""

OWNER = PREFIX + "owner"
"""Always ``OWNER_VALUE``: marks a container as created by the scheduler (boot-time reconcile)."""
OWNER_VALUE = "scheduler"

ENV = PREFIX + "env"
"""Name of the environment the container belongs to."""

SERVICE = PREFIX + "service"
"""Name of the service, within its environment."""

REPLICA = PREFIX + "replica"
"""Replica index of the service, a decimal integer from 0."""

GENERATION = PREFIX + "generation"
"""Environment generation that created the container, a decimal integer from 1."""

SPEC_HASH = PREFIX + "spec-hash"
"""Hex digest of the resolved service spec; a different hash means the container must be replaced."""

LOG_DIR = PREFIX + "log-dir"
"""Absolute directory holding ``stdout.log`` and ``stderr.log``; empty or absent discards output."""

LOG_MAX_BYTES = PREFIX + "log-max-bytes"
"""Size in bytes, a decimal integer, at which a log file is rotated; absent means the writer's default."""

LOG_MAX_FILES = PREFIX + "log-max-files"
"""Log files kept per stream (the current one included), a decimal integer; absent means the default."""


def owned(labels: Mapping[str, str]) -> bool:
    """Whether a container with these labels was created by the scheduler."""
    return labels.get(OWNER) == OWNER_VALUE


STOP_SIGNAL = PREFIX + "stop-signal"
"""The image's ``StopSignal`` (e.g. ``SIGINT`` for PostgreSQL), recorded at create; a stop that names no
signal sends this one, as ``docker stop`` does. Absent means SIGTERM."""
