"""The service dependency graph: cycle detection and start order in waves."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.domain import ServiceSpec
from scheduler.errors import FieldViolation, InvalidArgument


def find_cycle(services: Sequence[ServiceSpec]) -> list[str] | None:
    """Return a dependency cycle as ``[a, b, ..., a]``, or None; unknown names are ignored."""
    deps = {s.name: [d.service for d in s.depends_on] for s in services}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in deps.get(name, []):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle is not None:
                    return cycle
        path.pop()
        state[name] = 2
        return None

    for service in services:
        if service.name not in state:
            cycle = visit(service.name)
            if cycle is not None:
                return cycle
    return None


def topological_order(services: Sequence[ServiceSpec]) -> list[list[str]]:
    """Group services into waves: every service's dependencies are in earlier waves.

    Services of one wave can start concurrently; stopping goes through the waves in reverse.
    Names within a wave keep the order the services were declared in.

    Raises:
        InvalidArgument: a dependency names no service, or the dependencies form a cycle.
    """
    names = [s.name for s in services]
    known = set(names)
    violations = [
        FieldViolation(f"spec.services.{s.name}.depends_on[{i}].service", f"names no service: {d.service!r}")
        for s in services
        for i, d in enumerate(s.depends_on)
        if d.service not in known
    ]
    if violations:
        raise InvalidArgument.of(violations)
    cycle = find_cycle(services)
    if cycle is not None:
        raise InvalidArgument.of(
            [FieldViolation(f"spec.services.{cycle[0]}.depends_on", f"dependency cycle: {' -> '.join(cycle)}")]
        )
    pending = {s.name: {d.service for d in s.depends_on} for s in services}
    waves: list[list[str]] = []
    done: set[str] = set()
    while pending:
        wave = [name for name in names if name in pending and pending[name] <= done]
        if not wave:  # unreachable once cycles are excluded; guards the loop's bound
            raise InvalidArgument.of([FieldViolation("spec.services", "dependencies cannot be ordered")])
        waves.append(wave)
        done.update(wave)
        for name in wave:
            del pending[name]
    return waves
