"""Clone use case of the service: a new environment from a running or sleeping one's spec and data."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

from scheduler import errors, log, quotas
from scheduler.cluster.base import Fleet
from scheduler.config import LimitSettings
from scheduler.domain import Environment, EnvironmentRequest, EnvironmentSpec, Event, EventType, HistoryEntry
from scheduler.orchestrator.clone import check_cloneable
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.service.views import RequestEdit, check_request_id, pending
from scheduler.validation import env_name_problem

_log = log.get("service")


class CloneCases:
    """Clones of running or sleeping environments; a part of :class:`EnvironmentService`."""

    _ledger: Ledger
    _orchestrator: Orchestrator
    _events: EventBus
    _limits: LimitSettings
    _create_lock: asyncio.Lock
    _resolve: Callable[[str, EnvironmentRequest], Awaitable[EnvironmentSpec]]
    _count_environments: Callable[[], Awaitable[int]]
    _earlier: Callable[[str, str], Awaitable[Environment | None]]
    _check_free: Callable[[str], Awaitable[None]]
    _redact: Callable[[Environment], Environment]
    _fleet: Fleet | None
    _dispatch: bool

    async def clone(
        self,
        source: str,
        name: str,
        edit: RequestEdit,
        *,
        request_id: str = "",
        actor: str = "",
        validate_only: bool = False,
    ) -> Environment:
        """Create environment ``name`` from ``source``'s request (as ``edit`` changes it) and a copy of its volumes.

        The copy is taken before this returns (see :mod:`scheduler.orchestrator.clone`); the new
        environment then deploys in the background like a created one, with fresh generated
        secrets. With ``validate_only``, return the environment that would be created.

        Raises:
            InvalidArgument: a bad name or override (the stack cannot change).
            NotFound: naming ``source``.
            AlreadyExists: ``name`` is taken, or ``request_id`` created another environment.
            FailedPrecondition: ``source`` is neither RUNNING nor asleep with its latest generation rolled out.
        """
        check_request_id(request_id)
        violations = [
            errors.FieldViolation(field, problem)
            for field, value in (("source", source), ("name", name))
            if (problem := env_name_problem(value))
        ]
        if violations:
            raise errors.InvalidArgument.of(violations)
        earlier = await self._earlier(request_id, name)
        if earlier is not None:
            return self._redact(earlier)
        try:
            original = await self._ledger.get(source)
        except errors.NotFound:
            raise errors.NotFound(f"source environment {source!r} not found", env=source, field="source") from None
        await self._check_free(name)
        request = edit(original.request or EnvironmentRequest(stack=original.spec.stack))
        if request.stack != original.spec.stack:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("spec.stack", f"a clone keeps its source's stack {original.spec.stack!r}")]
            )
        spec = await self._resolve(name, request)
        quotas.check_environment_count(await self._count_environments(), self._limits)
        check_cloneable(original)
        home = ""
        if self._fleet is not None:
            # Volumes are node-local: the copy is made, and runs, where its source runs.
            await self._fleet.check_local(original, "clone it through that node, where its volumes are")
            home = await self._fleet.here(name, spec)
        if validate_only:
            return self._redact(pending(name, spec, request, request_id, datetime.now(UTC)))
        snapshot = await self._orchestrator.snapshot(source)
        placed: builtins.list[str] = []
        try:
            async with self._create_lock:
                earlier = await self._earlier(request_id, name)
                if earlier is not None:
                    await self._orchestrator.discard_snapshot(snapshot)
                    return self._redact(earlier)
                await self._check_free(name)
                quotas.check_environment_count(await self._count_environments(), self._limits)
                placed = await self._orchestrator.install_snapshot(snapshot, name, spec, original.spec)
                created = datetime.now(UTC)
                env = await self._ledger.create(replace(pending(name, spec, request, request_id, created), node=home))
        except BaseException:
            await self._orchestrator.discard_snapshot(snapshot)
            if placed:
                await self._orchestrator.remove_volumes(name, placed)
            raise
        paused_ms = round(snapshot.paused.total_seconds() * 1000)
        detail = f"stack {spec.stack}, cloned from {source} (volumes {', '.join(snapshot.volumes) or 'none'})"
        await self._ledger.append_history(HistoryEntry(name, 1, created, actor, "clone", detail))
        await self._ledger.append_history(
            HistoryEntry(
                source, original.generation, datetime.now(UTC), actor, "cloned", f"to {name}; paused {paused_ms} ms"
            )
        )
        self._events.publish(Event(EventType.ENVIRONMENT_CREATED, name, created, generation=1))
        _log.info("environment.cloned", env=name, source=source, paused_ms=paused_ms)
        if self._dispatch:
            self._orchestrator.submit_deploy(name)
        return self._redact(env)
