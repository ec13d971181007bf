"""What the orchestrator tells an observer (metrics, and anything else that watches operations).

The orchestrator and the supervisor call these hooks and know nothing of who listens; the daemon
passes a Prometheus recorder, tests and embedders the default :class:`NullObserver`. Every hook is
synchronous and must not block: it runs on the event loop in the middle of an operation.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    """Receives the outcome and duration of what the orchestrator does."""

    def operation_finished(self, operation: str, stack: str, outcome: str, seconds: float) -> None:
        """A deploy, update or delete ended: ``outcome`` is succeeded, failed, rolled_back or cancelled."""
        ...

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        """One health probe (``exec``, ``tcp`` or ``http``) ran."""
        ...

    def container_restarted(self, reason: str) -> None:
        """The supervisor scheduled a restart: ``reason`` is error, completed, oom or unhealthy."""
        ...

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        """A service's image was made present: ``outcome`` is pulled, present or failed."""
        ...


class NullObserver:
    """Listens to nothing."""

    def operation_finished(self, operation: str, stack: str, outcome: str, seconds: float) -> None:
        return None

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        return None

    def container_restarted(self, reason: str) -> None:
        return None

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        return None


NULL_OBSERVER: Observer = NullObserver()
