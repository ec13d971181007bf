"""What an update changes, service by service (the ``nomad job plan`` of the scheduler)."""

from __future__ import annotations

from dataclasses import fields

from scheduler.domain import ChangeAction, EnvironmentSpec, ServiceChange, ServiceSpec


def changed_fields(old: ServiceSpec, new: ServiceSpec) -> list[str]:
    """Names of the fields that differ between two versions of one service."""
    return [f.name for f in fields(ServiceSpec) if getattr(old, f.name) != getattr(new, f.name)]


def plan(old: EnvironmentSpec, new: EnvironmentSpec) -> list[ServiceChange]:
    """Compare two specs: a service is kept, added, removed, scaled or replaced.

    Only a change of ``replicas`` alone is a scale; any other field replaces the containers.
    Secret values are compared but never named in a reason beyond the variable's name.
    """
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    changes: list[ServiceChange] = []
    for name, service in after.items():
        previous = before.get(name)
        if previous is None:
            changes.append(ServiceChange(name, ChangeAction.ADD, "new service"))
            continue
        diff = changed_fields(previous, service)
        if not diff:
            changes.append(ServiceChange(name, ChangeAction.KEEP))
        elif diff == ["replicas"]:
            changes.append(
                ServiceChange(name, ChangeAction.SCALE, f"replicas {previous.replicas} -> {service.replicas}")
            )
        else:
            changes.append(ServiceChange(name, ChangeAction.REPLACE, _reason(previous, service, diff)))
    for name in before:
        if name not in after:
            changes.append(ServiceChange(name, ChangeAction.REMOVE, "service removed"))
    return changes


def _reason(old: ServiceSpec, new: ServiceSpec, diff: list[str]) -> str:
    parts = []
    for name in diff:
        if name == "env":
            keys = sorted(k for k in {*old.env, *new.env} if old.env.get(k) != new.env.get(k))
            parts.append(f"env ({', '.join(keys)})")
        elif name == "image":
            parts.append(f"image {old.image} -> {new.image}")
        else:
            parts.append(name)
    return "changed: " + ", ".join(parts)
