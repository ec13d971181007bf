"""Use cases behind the API: validate, store, hand to the orchestrator, answer in domain types.

Secrets are redacted here, on the way out: the store keeps them (a redeploy needs them), the API
never returns them, and the log never sees them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from scheduler import bounds, errors, log, quotas
from scheduler.cluster.base import Fleet
from scheduler.cluster.node import Node
from scheduler.config import LimitSettings
from scheduler.domain import (
    ChangeAction,
    DataTemplate,
    Environment,
    EnvironmentFilter,
    EnvironmentRequest,
    EnvironmentSpec,
    EnvironmentStatus,
    Event,
    EventType,
    HistoryEntry,
    OperationRecord,
    ServiceChange,
)
from scheduler.orchestrator.backup import Backups
from scheduler.orchestrator.events import EventBus, EventFeed
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.orchestrator.plan import plan
from scheduler.orchestrator.timeline import Timeline
from scheduler.service.backups import BackupCases
from scheduler.service.clones import CloneCases
from scheduler.service.observation import Observation
from scheduler.service.sleep import SleepAndWake
from scheduler.service.views import (
    RequestEdit,
    Shown,
    check_etag,
    check_name,
    check_request_id,
    matches,
    pending,
    pushdown,
    redact,
)
from scheduler.stacks.catalog import Catalog
from scheduler.stacks.resolve import resolve
from scheduler.stacks.stack import Stack
from scheduler.storage.base import PageKey, decode_page_token, effective_page_size, encode_page_token
from scheduler.validation import validate

_log = log.get("service")

DEFAULT_DRAIN = timedelta(seconds=2)
"""How long replaced containers keep serving connections already routed to them."""


def _now() -> datetime:
    return datetime.now(UTC)


class EnvironmentService(BackupCases, CloneCases, Observation, SleepAndWake):
    """The scheduler's use cases, in domain terms."""

    def __init__(
        self,
        ledger: Ledger,
        orchestrator: Orchestrator,
        events: EventBus,
        catalog: Catalog,
        limits: LimitSettings,
        backups: Backups | None = None,
        timeline: Timeline | None = None,
        fleet: Fleet | None = None,
        *,
        dispatch: bool = True,
        feed: EventFeed | None = None,
    ) -> None:
        self._fleet = fleet
        self._dispatch = dispatch
        """False in a fleet: the owning node's agent starts operations from the stored change."""
        self._backups = backups
        self._timeline = timeline
        self._ledger = ledger
        self._orchestrator = orchestrator
        self._events = events
        self._feed: EventFeed = feed or events
        """What WatchEvents reads: the bus alone, every node's events through etcd in a fleet."""
        self._catalog = catalog
        self._limits = limits
        self._closing = asyncio.Event()
        self._create_lock = asyncio.Lock()
        self._shown = Shown(catalog)
        ledger.watch(self._shown.forget)

    def begin_shutdown(self) -> None:
        """End open streams (follows, watches) so that shutdown does not wait on them."""
        self._closing.set()

    def set_limits(self, limits: LimitSettings) -> None:
        """Apply new bounds (a configuration reload) to every request from now on."""
        self._limits = limits

    # --- environments ------------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        request: EnvironmentRequest,
        *,
        request_id: str = "",
        actor: str = "",
        validate_only: bool = False,
    ) -> Environment:
        """Validate and store a new environment, then deploy it in the background.

        With ``validate_only``, return the environment that would be created and store nothing.
        """
        check_request_id(request_id)
        # One create at a time: the request-id check and the insert must not interleave.
        async with self._create_lock:
            earlier = await self._earlier(request_id, name)
            if earlier is not None:
                return self._redact(earlier)
            spec = await self._resolve(name, request)
            quotas.check_environment_count(await self._count_environments(), self._limits)
            if self._fleet is not None:
                await self._fleet.admit(name, spec)
            created = _now()
            env = pending(name, spec, request, request_id, created)
            if validate_only:
                await self._check_free(name)
                return self._redact(env)
            env = await self._ledger.create(env)
        await self._ledger.append_history(
            HistoryEntry(env=name, generation=1, at=created, actor=actor, action="create", detail=f"stack {spec.stack}")
        )
        self._events.publish(Event(EventType.ENVIRONMENT_CREATED, name, created, generation=1))
        _log.info("environment.created", env=name, stack=spec.stack)
        if self._dispatch:
            self._orchestrator.submit_deploy(name)
        return self._redact(env)

    async def get(self, name: str) -> Environment:
        """Return one environment, secrets redacted."""
        check_name(name)
        return self._shown.of(await self._ledger.get(name))

    async def list(
        self, *, page_size: int = 0, page_token: str = "", where: EnvironmentFilter | None = None
    ) -> tuple[builtins.list[Environment], str]:
        """Return a page of environments matching ``where``, secrets redacted.

        The store filters by status and label; the other terms are checked here, page by page
        of the store, so a page may hold fewer than ``page_size`` environments before the last.
        """
        bounds.check_page_token(page_token)
        where = where or EnvironmentFilter()
        statuses, labels = pushdown(where)
        wanted = effective_page_size(page_size)
        if statuses is not None and not statuses:
            return [], ""
        found: builtins.list[Environment] = []
        token = page_token
        while len(found) < wanted:
            envs, token = await self._ledger.list(wanted - len(found), token, statuses or (), labels)
            found += [e for e in envs if matches(e, where)]
            if not token:
                break
        return [self._shown.of(e) for e in found], token

    async def delete(self, name: str, *, keep_volumes: bool = False, actor: str = "", etag: str = "") -> Environment:
        """Mark an environment DELETING and remove it in the background (if ``etag`` still matches)."""
        check_name(name)
        # The etag check and the write are one step: no other change may land between them.
        marked = False

        def mark(env: Environment) -> Environment | None:
            nonlocal marked
            check_etag(env, etag)
            if env.status is EnvironmentStatus.DELETING:
                return None
            marked = True
            # Stored, so that the node running it (maybe not this one) keeps the volumes too.
            return replace(env, status=EnvironmentStatus.DELETING, keep_volumes=keep_volumes, updated_at=_now())

        env = await self._ledger.change(name, mark)
        if marked:
            await self._ledger.append_history(
                HistoryEntry(env=name, generation=env.generation, at=_now(), actor=actor, action="delete")
            )
        if self._dispatch:
            self._orchestrator.submit_delete(name, keep_volumes=keep_volumes)
        return self._redact(env)

    async def update(
        self,
        name: str,
        edit: RequestEdit,
        *,
        validate_only: bool = False,
        drain: timedelta | None = None,
        actor: str = "",
        etag: str = "",
    ) -> tuple[Environment, builtins.list[ServiceChange]]:
        """Resolve a new spec and roll it out in the background (or, with ``validate_only``, only plan it).

        ``edit`` receives the stored request (secrets included) and returns the new one; ``etag``,
        when given, must be the environment's current one.
        """
        check_name(name)
        env = await self._ledger.get(name)
        check_etag(env, etag)
        request = edit(env.request or EnvironmentRequest(stack=env.spec.stack))
        if request.stack != env.spec.stack:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("spec.stack", f"cannot change from {env.spec.stack!r} to {request.stack!r}")]
            )
        if env.status in (EnvironmentStatus.DELETING, EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING):
            raise errors.FailedPrecondition(
                f"environment {name!r} is {env.status.value.lower()}; update it once that is over", env=name
            )
        if env.status is EnvironmentStatus.STOPPED:
            raise errors.FailedPrecondition(
                f"environment {name!r} is stopped; start it (StartEnvironment) before updating it", env=name
            )
        if drain is not None and drain < timedelta(0):
            raise errors.InvalidArgument.of([errors.FieldViolation("drain", "must not be negative")])
        if drain is not None:
            bounds.check_duration(drain, "drain", bounds.MAX_DRAIN)
        spec = await self._resolve(name, request, previous=env.spec)
        changes = plan(env.spec, spec)
        if validate_only:
            return self._redact(env), changes
        if all(change.action is ChangeAction.KEEP for change in changes) and spec == env.spec:
            return self._redact(env), changes

        def apply(latest: Environment) -> Environment:
            # Planning awaited: a concurrent change may have landed meanwhile.
            check_etag(latest, etag)
            if latest.generation != env.generation:
                raise errors.Conflict(
                    f"environment {name!r} was updated while this update was planned; retry", env=name
                )
            if latest.status is EnvironmentStatus.DELETING:
                raise errors.FailedPrecondition(f"environment {name!r} is being deleted", env=name)
            return replace(latest, spec=spec, request=request, generation=env.generation + 1, updated_at=_now())

        updated = await self._ledger.change(name, apply)
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
        if self._dispatch:
            self._orchestrator.submit_update(name, env, changes, DEFAULT_DRAIN if drain is None else drain)
        return self._redact(updated), changes

    async def history(
        self, name: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[HistoryEntry], str]:
        """Return a page of the audit trail of an environment (kept after its deletion), oldest first."""
        check_name(name)
        size = effective_page_size(page_size)
        key = decode_page_token(page_token)
        if key is not None and key.name != name:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("page_token", f"was issued for the history of {key.name!r}, not {name!r}")]
            )
        entries = await self._ledger.history(name)
        if not entries:
            raise errors.NotFound(f"environment {name!r} has no history", env=name)
        start = key.seq if key is not None else 0
        end = start + size
        token = encode_page_token(PageKey(end, name)) if end < len(entries) else ""
        return entries[start:end], token

    async def operations(self, name: str) -> builtins.list[OperationRecord]:
        """Timelines of the environment's recent operations, oldest first."""
        check_name(name)
        if self._timeline is None:
            raise errors.Unimplemented("this daemon keeps no operation timelines")
        return await self._timeline.of(name)

    async def templates(self) -> builtins.list[DataTemplate]:
        """The data-directory templates on the host, oldest first."""
        return await self._orchestrator.templates()

    # --- observation ---------------------------------------------------------------------------------

    def stacks(self, *, page_size: int = 0, page_token: str = "") -> tuple[builtins.list[Stack], str]:
        """A page of the catalogue of precomposed stacks, by name."""
        size = effective_page_size(page_size)
        key = decode_page_token(page_token)
        ordered = sorted(self._catalog.stacks(), key=lambda stack: stack.name)
        after = [s for s in ordered if key is None or s.name > key.name]
        page = after[:size]
        token = encode_page_token(PageKey(0, page[-1].name)) if len(after) > size else ""
        return page, token

    async def nodes(self) -> builtins.list[Node]:
        """The live nodes of the fleet (this daemon alone when it runs without one)."""
        return await self._nodes().nodes()

    async def drain_node(self, name: str) -> Node:
        """Stop placing on node ``name`` and move its environments away.

        Raises:
            InvalidArgument: ``node`` is empty.
            NotFound: no live node has that name.
            FailedPrecondition: the daemon runs alone.
        """
        return await self._nodes().drain(_node_name(name, "drain"))

    async def undrain_node(self, name: str) -> Node:
        """Let node ``name`` take new environments again.

        Raises:
            InvalidArgument: ``node`` is empty.
            NotFound: no live node has that name.
            FailedPrecondition: the daemon runs alone.
        """
        return await self._nodes().undrain(_node_name(name, "undrain"))

    def _nodes(self) -> Fleet:
        if self._fleet is None:
            raise errors.Unimplemented("this daemon was built without a node registry")
        return self._fleet

    def _redact(self, env: Environment) -> Environment:
        return redact(env, self._catalog)

    # --- helpers ---------------------------------------------------------------------------------------

    async def _earlier(self, request_id: str, name: str) -> Environment | None:
        """The environment an earlier call with ``request_id`` created, if it is ``name``.

        Raises:
            AlreadyExists: naming ``request_id`` when it created another environment.
        """
        if not request_id:
            return None
        earlier = await self._ledger.find_by_request_id(request_id)
        if earlier is not None and earlier.name != name:
            raise errors.AlreadyExists(
                f"request_id {request_id!r} already created environment {earlier.name!r}", field="request_id"
            )
        return earlier

    async def _check_free(self, name: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await self._ledger.get(name)
            raise errors.AlreadyExists(f"environment {name!r} already exists", env=name)

    async def _count_environments(self) -> int:
        """Environments held now (the ledger's count: nothing is read or decoded)."""
        return len(self._ledger.names())

    async def _resolve(
        self, name: str, request: EnvironmentRequest, previous: EnvironmentSpec | None = None
    ) -> EnvironmentSpec:
        """Bound, resolve, default and validate a request, and hold it to the environment quotas.

        Off the event loop: it is CPU work.
        """
        bounds.check_request(request)

        def work() -> EnvironmentSpec:
            spec = quotas.with_defaults(resolve(request, name, self._catalog, previous=previous), self._limits)
            validate(name, spec, self._limits)
            quotas.check_environment(name, spec, self._limits)
            return spec

        return await asyncio.to_thread(work)


def _node_name(name: str, verb: str) -> str:
    if not name:
        raise errors.InvalidArgument.of([errors.FieldViolation("node", f"is required: the name of the node to {verb}")])
    return name
