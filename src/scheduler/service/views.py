"""What the service shows of an environment: secrets redacted, filters applied, etags checked."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from scheduler import bounds, errors
from scheduler.domain import (
    Environment,
    EnvironmentFilter,
    EnvironmentRequest,
    EnvironmentSpec,
    EnvironmentStatus,
    ServiceOverride,
    ServiceSpec,
)
from scheduler.domain import etag as domain_etag
from scheduler.redaction import REDACTED, looks_secret
from scheduler.stacks.catalog import Catalog

RequestEdit = Callable[[EnvironmentRequest], EnvironmentRequest]
"""Turns the stored request into the new one (a field mask applied, or a replacement)."""


def _redact_service(service: ServiceSpec) -> ServiceSpec:
    if not service.secret_env:
        return service
    return replace(service, env={k: REDACTED if k in service.secret_env else v for k, v in service.env.items()})


def _redact_override(override: ServiceOverride, secret_env: frozenset[str]) -> ServiceOverride:
    if not any(k in secret_env or looks_secret(k) for k in override.env):
        return override
    env = {k: REDACTED if k in secret_env or looks_secret(k) else v for k, v in override.env.items()}
    return replace(override, env=env)


def check_etag(env: Environment, etag: str) -> None:
    current = domain_etag(env)
    if etag and etag != current:
        raise errors.Conflict(
            f"environment {env.name!r} changed since it was read (etag {etag!r}, now {current!r}); "
            "get it again and retry",
            reason="ETAG_MISMATCH",
            env=env.name,
            etag=current,
        )


def pushdown(where: EnvironmentFilter) -> tuple[set[EnvironmentStatus] | None, dict[str, str]]:
    """The part of a filter the store answers: statuses and single-valued label equalities."""
    statuses: set[EnvironmentStatus] | None = None
    labels: dict[str, str] = {}
    for term in where.terms:
        if term.negate:
            continue
        if term.field == "status":
            allowed = {EnvironmentStatus(v) for v in term.values}
            statuses = allowed if statuses is None else statuses & allowed
        elif term.field.startswith("labels.") and len(term.values) == 1:
            labels[term.field.removeprefix("labels.")] = term.values[0]
    return statuses, labels


def matches(env: Environment, where: EnvironmentFilter) -> bool:
    for term in where.terms:
        if term.field == "status":
            actual: str | None = env.status.value
        elif term.field == "stack":
            actual = env.spec.stack
        elif term.field == "name":
            actual = env.name
        else:
            actual = env.spec.labels.get(term.field.removeprefix("labels."))
        if term.prefix:
            hit = actual is not None and any(actual.startswith(v) for v in term.values)
        else:
            hit = actual in term.values
        if hit == term.negate:
            return False
    return True


def check_name(name: str) -> None:
    bounds.check_name(name)


def redact(env: Environment, catalog: Catalog) -> Environment:
    """``env`` with every secret value (declared secret env, secret stack parameters) replaced."""
    services = tuple(_redact_service(s) for s in env.spec.services)
    request = env.request
    if request is not None:
        stack = catalog.find(request.stack)
        secret = {p.name for p in stack.parameters if p.secret} if stack else set()
        secret_env = {s.name: s.secret_env for s in env.spec.services}
        request = replace(
            request,
            parameters={k: REDACTED if k in secret else v for k, v in request.parameters.items()},
            services={
                name: _redact_override(override, secret_env.get(name, frozenset()))
                for name, override in request.services.items()
            },
        )
    return replace(env, spec=replace(env.spec, services=services), request=request)


class Shown:
    """Redacted copies of the ledger's current environments, each made once per stored state.

    The ledger replaces an environment's object on every change and never mutates one, so a
    copy made from this very object is still right; any other object (a newer revision) is
    redacted afresh. The same redacted object is returned each time, so the API can reuse
    what it built from it. One entry per environment, dropped when it is removed.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._items: dict[str, tuple[Environment, Environment]] = {}

    def of(self, env: Environment) -> Environment:
        """The redacted copy of ``env``, the ledger's current object for its name."""
        held = self._items.get(env.name)
        if held is not None and held[0] is env:
            return held[1]
        redacted = redact(env, self._catalog)
        self._items[env.name] = (env, redacted)
        return redacted

    def forget(self, before: Environment | None, after: Environment | None) -> None:
        """A ledger watcher: drop the copy of a removed environment."""
        if after is None and before is not None:
            self._items.pop(before.name, None)


def check_request_id(request_id: str) -> None:
    """Bound a client-chosen request id."""
    if len(request_id) > bounds.MAX_REQUEST_ID:
        raise errors.InvalidArgument.of(
            [errors.FieldViolation("request_id", f"must be at most {bounds.MAX_REQUEST_ID} characters")]
        )


def pending(
    name: str, spec: EnvironmentSpec, request: EnvironmentRequest, request_id: str, created: datetime
) -> Environment:
    """A new environment, accepted and not deployed yet."""
    return Environment(
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
