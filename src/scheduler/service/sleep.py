"""Sleep and wake use cases of the service: StopEnvironment and StartEnvironment."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from scheduler import bounds, errors
from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry, SleepRequest
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.service.views import check_etag, check_name

NOT_YET = (EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING, EnvironmentStatus.DELETING)
"""Statuses an environment cannot be stopped in (the operation under way owns it)."""


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _request_marker(request_id: str) -> str:
    """How an accepted stop or start records its request id in the history (its retry finds it there)."""
    return f"request_id {request_id}"


class SleepAndWake:
    """Stop and start of environments; a part of :class:`EnvironmentService`."""

    _ledger: Ledger
    _orchestrator: Orchestrator

    def _redact(self, env: Environment) -> Environment:
        raise NotImplementedError  # provided by EnvironmentService

    async def stop(
        self, name: str, *, etag: str = "", request_id: str = "", actor: str = "", validate_only: bool = False
    ) -> Environment:
        """Put an environment to sleep in the background: its containers stop, all else is kept.

        Raises:
            FailedPrecondition: it is pending, deploying or being deleted.
            Conflict: ``etag`` is stale.
        """
        env = await self._sleep_request(name, etag, request_id)
        if env is None or validate_only:
            return self._redact(await self._ledger.get(name))
        if env.status in NOT_YET:
            raise errors.FailedPrecondition(
                f"environment {name!r} is {env.status.value.lower()}; stop it once that is over", env=name
            )
        if env.status is EnvironmentStatus.STOPPED and not self._orchestrator.busy(name):
            return self._redact(env)
        await self._record_sleep(env, "stop", actor, request_id)
        message = f"stopped by {actor or 'a client'} at {_stamp()}"
        if self._orchestrator.owns(env):
            self._orchestrator.submit_stop(name, "Requested", message)
        else:
            await self._forward(env, SleepRequest("stop", message))
        return self._redact(env)

    async def start(
        self, name: str, *, etag: str = "", request_id: str = "", actor: str = "", validate_only: bool = False
    ) -> Environment:
        """Wake a stopped environment in the background: its containers start in dependency order.

        An environment that is not stopped (and has no operation queued that may stop it) is left
        as it is.

        Raises:
            FailedPrecondition: it is being deleted.
            Conflict: ``etag`` is stale.
        """
        env = await self._sleep_request(name, etag, request_id)
        if env is None or validate_only:
            return self._redact(await self._ledger.get(name))
        if env.status is EnvironmentStatus.DELETING:
            raise errors.FailedPrecondition(f"environment {name!r} is being deleted", env=name)
        if env.status is not EnvironmentStatus.STOPPED and not self._orchestrator.busy(name):
            return self._redact(env)
        await self._record_sleep(env, "start", actor, request_id)
        message = f"started by {actor or 'a client'} at {_stamp()}"
        if self._orchestrator.owns(env):
            self._orchestrator.submit_start(name, message)
        else:
            await self._forward(env, SleepRequest("start", message))
        return self._redact(env)

    async def _forward(self, env: Environment, request: SleepRequest) -> None:
        """In a fleet, hand a stop or start of an environment another node runs to that node.

        The request is stored with the environment; the owner's agent carries it out.
        """

        def ask(current: Environment) -> Environment | None:
            return replace(current, requested=request) if current.uid == env.uid else None

        await self._ledger.change(env.name, ask)

    async def _sleep_request(self, name: str, etag: str, request_id: str) -> Environment | None:
        """Check a stop or start; None when ``request_id`` names one already accepted."""
        check_name(name)
        if len(request_id) > bounds.MAX_REQUEST_ID:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("request_id", f"must be at most {bounds.MAX_REQUEST_ID} characters")]
            )
        env = await self._ledger.get(name)
        if request_id:
            marker = _request_marker(request_id)
            if any(entry.detail == marker for entry in await self._ledger.history(name)):
                return None
        check_etag(env, etag)
        return env

    async def _record_sleep(self, env: Environment, action: str, actor: str, request_id: str) -> None:
        detail = _request_marker(request_id) if request_id else ""
        now = datetime.now(UTC)
        await self._ledger.append_history(HistoryEntry(env.name, env.generation, now, actor, action, detail))
