"""Small shared helpers for recording what the orchestrator observes."""

from __future__ import annotations

from datetime import UTC, datetime

from scheduler.domain import Condition


def now() -> datetime:
    """Current time, timezone-aware."""
    return datetime.now(UTC)


def with_condition(conditions: tuple[Condition, ...], condition: Condition) -> tuple[Condition, ...]:
    """``conditions`` with the one of ``condition``'s type replaced (or added)."""
    return (*(c for c in conditions if c.type != condition.type), condition)
