"""Turn a client's ``EnvironmentRequest`` into a full ``EnvironmentSpec``.

Resolution applies, in order: parameter values (given, default or generated), derived values,
placeholder substitution in the stack's services, the stack's ``finalize`` hook, then the
request's per-service overrides. Overrides are taken literally: placeholders are only expanded
in the stack's own templates, so a ``$`` in a user's value is never reinterpreted.

Checks here are about the request against the stack (unknown stack, service or parameter, bad
parameter values); the structural checks of the result are ``scheduler.validation.validate``.
Every problem is collected before raising, so a client sees them all at once.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping

from scheduler.domain import (
    EnvironmentRequest,
    EnvironmentSpec,
    RestartOverride,
    RestartPolicy,
    ServiceOverride,
    ServiceSpec,
)
from scheduler.errors import FieldViolation, Internal, InvalidArgument
from scheduler.redaction import looks_secret
from scheduler.stacks.catalog import Catalog
from scheduler.stacks.stack import Stack, Values


def resolve(
    request: EnvironmentRequest,
    env_name: str,
    catalog: Catalog,
    previous: EnvironmentSpec | None = None,
) -> EnvironmentSpec:
    """Resolve ``request`` for environment ``env_name`` against the stacks of ``catalog``.

    Generated values (a database password) are fresh per environment. When updating, pass the
    environment's current spec as ``previous``: a generated parameter the request leaves unset
    then keeps its old value, because a database volume initialised with a password only
    accepts that one.

    Raises:
        InvalidArgument: listing every bad field (``spec.stack``, ``spec.parameters.<name>``,
            ``spec.services.<name>``).
    """
    stack = catalog.find(request.stack)
    if stack is None:
        known = ", ".join(catalog.names()) or "none"
        raise InvalidArgument.of([FieldViolation("spec.stack", f"unknown stack {request.stack!r} (known: {known})")])
    violations: list[FieldViolation] = []
    kept = _previous_values(stack, previous) if previous is not None and previous.stack == stack.name else {}
    values, secret_names = _parameter_values(stack, request.parameters, env_name, violations, kept)
    for name in request.services:
        if stack.service(name) is None:
            known = ", ".join(s.name for s in stack.services)
            violations.append(
                FieldViolation(
                    f"spec.services.{name}",
                    f"stack {stack.name!r} has no service {name!r} (services: {known})",
                )
            )
    if violations:
        raise InvalidArgument.of(violations)

    services = tuple(_substitute_service(stack, s, values, secret_names) for s in stack.services)
    if stack.finalize is not None:
        services = stack.finalize(services, values)
    services = tuple(_mark_secrets(_apply_override(s, request.services.get(s.name))) for s in services)
    return EnvironmentSpec(
        stack=stack.name,
        services=services,
        labels=dict(request.labels),
        network=request.network,
        ttl=request.ttl,
        sleep_after_idle=request.sleep_after_idle,
    )


def _previous_values(stack: Stack, previous: EnvironmentSpec) -> dict[str, str]:
    """Recover generated parameters from a resolved spec: an env template that is exactly ``${p}``."""
    found: dict[str, str] = {}
    old = {s.name: s for s in previous.services}
    for param in stack.parameters:
        if param.generate is None:
            continue
        placeholders = (f"${{{param.name}}}", f"${param.name}")
        for service in stack.services:
            resolved = old.get(service.name)
            if resolved is None:
                continue
            for key, template in service.env.items():
                if template in placeholders and key in resolved.env:
                    found.setdefault(param.name, resolved.env[key])
    return found


def _parameter_values(
    stack: Stack,
    given: Mapping[str, str],
    env_name: str,
    violations: list[FieldViolation],
    kept: Mapping[str, str],
) -> tuple[dict[str, str], set[str]]:
    for name in given:
        if stack.parameter(name) is None:
            known = ", ".join(p.name for p in stack.parameters) or "none"
            violations.append(
                FieldViolation(
                    f"spec.parameters.{name}",
                    f"stack {stack.name!r} has no parameter {name!r} (parameters: {known})",
                )
            )
    values: dict[str, str] = {"env": env_name}
    secret_names: set[str] = set()
    for param in stack.parameters:
        where = f"spec.parameters.{param.name}"
        if param.secret:
            secret_names.add(param.name)
        if param.name in given:
            value = given[param.name]
            problem = param.problem(value)
            if problem is not None:
                violations.append(FieldViolation(where, problem))
                continue
        elif param.default is not None:
            value = param.default
        elif param.name in kept:
            value = kept[param.name]
        elif param.generate is not None:
            value = param.generate()
        else:
            violations.append(FieldViolation(where, f"is required by stack {stack.name!r}"))
            continue
        values[param.name] = value
    if violations:
        return values, secret_names
    for derived in stack.derived:
        values[derived.name] = derived.compute(values)
        if derived.secret:
            secret_names.add(derived.name)
    return values, secret_names


def _expand(text: str, values: Values, where: str) -> tuple[str, set[str]]:
    template = string.Template(text)
    try:
        result = template.substitute(values)
    except (KeyError, ValueError) as err:
        raise Internal(f"{where}: template {text!r} names an unknown or malformed placeholder: {err}") from err
    return result, set(template.get_identifiers())


def _substitute_service(stack: Stack, service: ServiceSpec, values: Values, secrets: set[str]) -> ServiceSpec:
    where = f"stack {stack.name!r} service {service.name!r}"

    def one(text: str) -> str:
        return _expand(text, values, where)[0]

    env: dict[str, str] = {}
    secret_env = set(service.secret_env)
    for key, template in service.env.items():
        env[key], used = _expand(template, values, f"{where} env {key}")
        if used & secrets:
            secret_env.add(key)
    health = dataclasses.replace(
        service.health, command=tuple(one(a) for a in service.health.command), path=one(service.health.path)
    )
    return dataclasses.replace(
        service,
        image=one(service.image),
        command=tuple(one(a) for a in service.command),
        args=tuple(one(a) for a in service.args),
        env=env,
        user=one(service.user),
        working_dir=one(service.working_dir),
        health=health,
        secret_env=frozenset(secret_env),
    )


def _apply_override(service: ServiceSpec, override: ServiceOverride | None) -> ServiceSpec:
    if override is None:
        return service
    changes: dict[str, object] = {}
    for f in dataclasses.fields(ServiceOverride):
        if f.name in ("env", "restart"):
            continue
        value = getattr(override, f.name)
        if value is not None:
            changes[f.name] = value
    if override.env:
        changes["env"] = {**service.env, **override.env}
    if override.restart is not None:
        changes["restart"] = _merge_restart(service.restart, override.restart)
    return dataclasses.replace(service, **changes)  # type: ignore[arg-type]


def _mark_secrets(service: ServiceSpec) -> ServiceSpec:
    """Treat every variable whose name looks secret as one, whoever set it (stack or override)."""
    named = {key for key in service.env if looks_secret(key)}
    if named <= service.secret_env:
        return service
    return dataclasses.replace(service, secret_env=service.secret_env | named)


def _merge_restart(policy: RestartPolicy, override: RestartOverride) -> RestartPolicy:
    """Apply the fields an override sets; an unset mode keeps the stack's (the API's UNSPECIFIED)."""
    given = {f.name: getattr(override, f.name) for f in dataclasses.fields(override)}
    return dataclasses.replace(policy, **{k: v for k, v in given.items() if v is not None})
