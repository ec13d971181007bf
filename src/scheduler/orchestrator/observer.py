"""What the orchestrator tells an observer (metrics, and anything else that watches operations).

The orchestrator and the supervisor call these hooks and know nothing of who listens; the daemon
passes a Prometheus recorder, tests and embedders the default :class:`NullObserver`. Every hook is
synchronous and must not block: it runs on the event loop in the middle of an operation.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    """Receives the outcome and duration of what the orchestrator does."""

    def operation_started(self, operation: str, env: str) -> None:
        """A deploy, update or delete of ``env`` began (operations on one environment never overlap)."""
        ...

    def operation_finished(self, operation: str, env: str, stack: str, outcome: str, seconds: float) -> None:
        """A deploy, update or delete ended: ``outcome`` is succeeded, failed, rolled_back or cancelled."""
        ...

    def step(self, env: str, step: str, service: str = "", detail: str = "") -> None:
        """A step of the operation under way on ``env`` (pull, create, start, probe, traffic, ...)."""
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

    def operation_started(self, operation: str, env: str) -> None:
        return None

    def operation_finished(self, operation: str, env: str, stack: str, outcome: str, seconds: float) -> None:
        return None

    def step(self, env: str, step: str, service: str = "", detail: str = "") -> None:
        return None

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        return None

    def container_restarted(self, reason: str) -> None:
        return None

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        return None


NULL_OBSERVER: Observer = NullObserver()


class Observers:
    """Tells every one of several observers."""

    def __init__(self, *observers: Observer) -> None:
        self._all = observers

    def operation_started(self, operation: str, env: str) -> None:
        for o in self._all:
            o.operation_started(operation, env)

    def operation_finished(self, operation: str, env: str, stack: str, outcome: str, seconds: float) -> None:
        for o in self._all:
            o.operation_finished(operation, env, stack, outcome, seconds)

    def step(self, env: str, step: str, service: str = "", detail: str = "") -> None:
        for o in self._all:
            o.step(env, step, service, detail)

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        for o in self._all:
            o.probe_finished(kind, ok, seconds)

    def container_restarted(self, reason: str) -> None:
        for o in self._all:
            o.container_restarted(reason)

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        for o in self._all:
            o.image_ensured(outcome, seconds, fetched_bytes)


class ProbeSteps(Observers):
    """Also records each probe as a step of the operation on ``env`` (probes of a deploy's health gate)."""

    def __init__(self, inner: Observer, env: str, service: str, container: str) -> None:
        super().__init__(inner)
        self._inner, self._env, self._service, self._container = inner, env, service, container

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        super().probe_finished(kind, ok, seconds)
        verdict = "passed" if ok else "failed"
        self._inner.step(self._env, "probe", self._service, f"{self._container}: {kind} {verdict} in {seconds:.3f}s")
