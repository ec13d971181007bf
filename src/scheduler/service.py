"""Use cases behind the API: validate, store, hand to the orchestrator, answer in domain types.

Secrets are redacted here, on the way out: the store keeps them (a redeploy needs them), the API
never returns them, and the log never sees them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from scheduler import errors, log
from scheduler.config import LimitSettings
from scheduler.domain import (
    ChangeAction,
    ContainerSample,
    Environment,
    EnvironmentRequest,
    EnvironmentStatus,
    Event,
    EventType,
    HistoryEntry,
    LogLine,
    LogQuery,
    ServiceChange,
    ServiceSpec,
)
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.logs import read_logs
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.orchestrator.plan import plan
from scheduler.stacks.catalog import Catalog
from scheduler.stacks.resolve import resolve
from scheduler.stacks.stack import Stack
from scheduler.validation import validate

_log = log.get("service")

REDACTED = "<redacted>"
DEFAULT_DRAIN = timedelta(seconds=2)
"""How long replaced containers keep serving connections already routed to them."""


def _now() -> datetime:
    return datetime.now(UTC)


class EnvironmentService:
    """The scheduler's use cases, in domain terms."""

    def __init__(
        self,
        ledger: Ledger,
        orchestrator: Orchestrator,
        events: EventBus,
        catalog: Catalog,
        limits: LimitSettings,
    ) -> None:
        self._ledger = ledger
        self._orchestrator = orchestrator
        self._events = events
        self._catalog = catalog
        self._limits = limits
        self._closing = asyncio.Event()
        self._create_lock = asyncio.Lock()

    def begin_shutdown(self) -> None:
        """End open streams (follows, watches) so that shutdown does not wait on them."""
        self._closing.set()

    # --- environments ------------------------------------------------------------------------------

    async def create(
        self, name: str, request: EnvironmentRequest, *, request_id: str = "", actor: str = ""
    ) -> Environment:
        """Validate and store a new environment, then deploy it in the background."""
        # One create at a time: the request-id check and the insert must not interleave.
        async with self._create_lock:
            if request_id:
                earlier = await self._ledger.find_by_request_id(request_id)
                if earlier is not None:
                    if earlier.name != name:
                        raise errors.AlreadyExists(
                            f"request_id {request_id!r} already created environment {earlier.name!r}",
                            field="request_id",
                        )
                    return self._redact(earlier)
            spec = resolve(request, name, self._catalog)
            validate(name, spec, self._limits)
            created = _now()
            env = Environment(
                name=name,
                uid=str(uuid.uuid4()),
                spec=spec,
                request=request,
                generation=1,
                status=EnvironmentStatus.PENDING,
                created_at=created,
                updated_at=created,
                request_id=request_id,
            )
            env = await self._ledger.create(env)
        await self._ledger.append_history(
            HistoryEntry(env=name, generation=1, at=created, actor=actor, action="create", detail=f"stack {spec.stack}")
        )
        self._events.publish(Event(EventType.ENVIRONMENT_CREATED, name, created, generation=1))
        _log.info("environment.created", env=name, stack=spec.stack)
        self._orchestrator.submit_deploy(name)
        return self._redact(env)

    async def get(self, name: str) -> Environment:
        """Return one environment, secrets redacted."""
        _check_name(name)
        return self._redact(await self._ledger.get(name))

    async def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Environment], str]:
        """Return a page of environments, secrets redacted."""
        envs, token = await self._ledger.list(page_size, page_token, statuses, labels or {})
        return [self._redact(e) for e in envs], token

    async def delete(
        self, name: str, *, keep_volumes: bool = False, actor: str = "", expected_revision: int | None = None
    ) -> Environment:
        """Mark an environment DELETING and remove it in the background.

        ``expected_revision`` (a client's etag) makes it conditional: Conflict if the
        environment changed since the client read it.
        """
        _check_name(name)
        marked = False

        def mark(env: Environment) -> Environment | None:
            nonlocal marked
            if env.status is EnvironmentStatus.DELETING:
                return None
            marked = True
            return replace(env, status=EnvironmentStatus.DELETING, updated_at=_now())

        env = await self._ledger.change(name, mark, expected_revision=expected_revision)
        if marked:
            await self._ledger.append_history(
                HistoryEntry(env=name, generation=env.generation, at=_now(), actor=actor, action="delete")
            )
        self._orchestrator.submit_delete(name, keep_volumes=keep_volumes)
        return self._redact(env)

    async def update(
        self,
        name: str,
        request: EnvironmentRequest,
        *,
        dry_run: bool = False,
        drain: timedelta | None = None,
        actor: str = "",
        expected_revision: int | None = None,
    ) -> tuple[Environment, builtins.list[ServiceChange]]:
        """Resolve a new spec and roll it out in the background (or, with ``dry_run``, only plan it).

        ``expected_revision`` (a client's etag) makes it conditional: Conflict if the
        environment changed since the client read it.
        """
        _check_name(name)
        env = await self._ledger.get(name)
        if expected_revision is not None and expected_revision != env.revision:
            raise errors.Conflict(
                f"environment {name!r} is at revision {env.revision}, not {expected_revision}: it changed since "
                "it was read; read it again and retry",
                env=name,
            )
        if request.stack != env.spec.stack:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("spec.stack", f"cannot change from {env.spec.stack!r} to {request.stack!r}")]
            )
        if env.status in (EnvironmentStatus.DELETING, EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING):
            raise errors.FailedPrecondition(
                f"environment {name!r} is {env.status.value.lower()}; update it once that is over", env=name
            )
        if drain is not None and drain < timedelta(0):
            raise errors.InvalidArgument.of([errors.FieldViolation("drain", "must not be negative")])
        spec = resolve(request, name, self._catalog, previous=env.spec)
        validate(name, spec, self._limits)
        changes = plan(env.spec, spec)
        if dry_run:
            return self._redact(env), changes
        if all(change.action is ChangeAction.KEEP for change in changes) and spec == env.spec:
            return self._redact(env), changes

        def apply(latest: Environment) -> Environment:
            if latest.spec != env.spec:
                raise errors.Conflict(f"environment {name!r} changed while the update was planned; retry", env=name)
            if latest.status is EnvironmentStatus.DELETING:
                raise errors.FailedPrecondition(f"environment {name!r} is being deleted", env=name)
            return replace(latest, spec=spec, request=request, generation=latest.generation + 1, updated_at=_now())

        updated = await self._ledger.change(name, apply, expected_revision=expected_revision)
        summary = "; ".join(
            f"{c.service}: {c.action.value.lower()}" for c in changes if c.action is not ChangeAction.KEEP
        )
        await self._ledger.append_history(
            HistoryEntry(
                env=name,
                generation=updated.generation,
                at=_now(),
                actor=actor,
                action="update",
                detail=summary,
            )
        )
        self._events.publish(
            Event(EventType.ENVIRONMENT_UPDATED, name, _now(), message=summary, generation=updated.generation)
        )
        self._orchestrator.submit_update(name, env, changes, DEFAULT_DRAIN if drain is None else drain)
        return self._redact(updated), changes

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """Return the audit trail of an environment (kept after its deletion)."""
        _check_name(name)
        entries = await self._ledger.history(name)
        if not entries:
            raise errors.NotFound(f"environment {name!r} has no history", env=name)
        return entries

    # --- observation ---------------------------------------------------------------------------------

    async def logs(self, name: str, query: LogQuery) -> AsyncIterator[LogLine]:
        """Yield log lines of an environment's containers (and follow them if asked)."""
        _check_name(name)
        env = await self._ledger.get(name)
        unknown = [s for s in query.services if s not in {svc.name for svc in env.spec.services}]
        if unknown:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("services", f"environment {name!r} has no service {unknown[0]!r}")]
            )
        async for line in read_logs(self._ledger, self._orchestrator.logs_dir, name, query, self._closing):
            yield line

    async def metrics(self, name: str, *, window: timedelta | None = None) -> builtins.list[ContainerSample]:
        """Sample every running container twice over ``window`` to get CPU as a rate."""
        _check_name(name)
        env = await self._ledger.get(name)
        return await self._orchestrator.sample_metrics(env, window or timedelta(seconds=1))

    async def watch(self, name: str) -> AsyncIterator[Event]:
        """Yield events (of one environment or all) until shutdown or the client leaves."""
        if name:
            _check_name(name)
        subscription = self._events.subscribe(name)
        closing = asyncio.ensure_future(self._closing.wait())
        upcoming: asyncio.Future[Event] | None = None
        try:
            while True:
                upcoming = asyncio.ensure_future(anext(subscription))
                done, _ = await asyncio.wait({upcoming, closing}, return_when=asyncio.FIRST_COMPLETED)
                if upcoming not in done:
                    return
                event = upcoming.result()
                upcoming = None
                yield event
        finally:
            # The generator must be idle before it can be closed, whether we return or are cancelled.
            for future in (upcoming, closing):
                if future is not None and not future.done():
                    future.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await future
            await subscription.aclose()

    def stacks(self) -> builtins.list[Stack]:
        """The catalogue of precomposed stacks."""
        return self._catalog.stacks()

    # --- helpers ---------------------------------------------------------------------------------------

    def _redact(self, env: Environment) -> Environment:
        services = tuple(_redact_service(s) for s in env.spec.services)
        request = env.request
        if request is not None:
            stack = self._catalog.find(request.stack)
            secret = {p.name for p in stack.parameters if p.secret} if stack else set()
            request = replace(
                request, parameters={k: REDACTED if k in secret else v for k, v in request.parameters.items()}
            )
        return replace(env, spec=replace(env.spec, services=services), request=request)


def _redact_service(service: ServiceSpec) -> ServiceSpec:
    if not service.secret_env:
        return service
    return replace(service, env={k: REDACTED if k in service.secret_env else v for k, v in service.env.items()})


def _check_name(name: str) -> None:
    if not name:
        raise errors.InvalidArgument.of([errors.FieldViolation("name", "must not be empty")])
