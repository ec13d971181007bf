"""Resource defaults and quotas, applied to a resolved spec before it is stored.

Like a Kubernetes LimitRange and ResourceQuota: a service that sets no CPU, memory or pids limit
(0) gets the daemon's default, and no CPU or memory request the default request (CPU: a quarter
of a core, or the limit if lower; memory: the limit), written into the stored spec, so "0" never
means unlimited and
``limits.max_*`` cannot be bypassed; an environment's sum over its replicas, and the number of
environments, are held to quotas answered with RESOURCE_EXHAUSTED naming the quota.
"""

from __future__ import annotations

from dataclasses import replace

from scheduler.config import LimitSettings
from scheduler.domain import EnvironmentSpec, Resources
from scheduler.errors import ResourceExhausted


def with_defaults(spec: EnvironmentSpec, limits: LimitSettings) -> EnvironmentSpec:
    """``spec`` with every unset (0) CPU limit, CPU weight, memory and pids limit at its default."""
    services = tuple(replace(s, resources=_defaulted(s.resources, limits)) for s in spec.services)
    return replace(spec, services=services)


def _defaulted(res: Resources, limits: LimitSettings) -> Resources:
    cpu = res.cpu_millis or limits.default_cpu_millis
    memory = res.memory_bytes or limits.default_memory_bytes
    return replace(
        res,
        cpu_millis=cpu,
        cpu_shares=res.cpu_shares or limits.default_cpu_shares,
        memory_bytes=memory,
        pids=res.pids or limits.default_pids,
        cpu_request_millis=res.cpu_request_millis or min(limits.default_cpu_request_millis, cpu),
        memory_request_bytes=res.memory_request_bytes or memory,
    )


def check_environment(name: str, spec: EnvironmentSpec, limits: LimitSettings) -> None:
    """Hold one environment (with defaults applied) to the per-environment quotas.

    Raises:
        ResourceExhausted: naming the first quota exceeded, with the asked and allowed amounts.
    """
    totals = (
        ("env_max_containers", "containers", sum(s.replicas for s in spec.services)),
        ("env_max_cpu_millis", "CPU millicores", sum(s.resources.cpu_millis * s.replicas for s in spec.services)),
        (
            "env_max_memory_bytes",
            "bytes of memory",
            sum(s.resources.memory_bytes * s.replicas for s in spec.services),
        ),
        ("env_max_published_ports", "published ports", sum(p.publish for s in spec.services for p in s.ports)),
    )
    for quota, what, asked in totals:
        allowed = getattr(limits, quota)
        if asked > allowed:
            raise ResourceExhausted(
                f"environment {name!r} asks for {asked} {what}, over the quota limits.{quota} = {allowed}",
                quota=f"limits.{quota}",
                env=name,
            )


def check_environment_count(existing: int, limits: LimitSettings) -> None:
    """Refuse a new environment when the daemon holds ``limits.max_environments`` already.

    Raises:
        ResourceExhausted: naming ``limits.max_environments``.
    """
    if existing >= limits.max_environments:
        raise ResourceExhausted(
            f"the daemon holds {existing} environments, the quota limits.max_environments = "
            f"{limits.max_environments}; delete one first",
            quota="limits.max_environments",
        )
