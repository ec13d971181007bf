"""CPU as a rate: sample an environment's running containers twice, a window apart."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from scheduler import domain
from scheduler.domain import ContainerState, Environment
from scheduler.runtime.base import ContainerRuntime


async def sample_metrics(
    runtime: ContainerRuntime, env: Environment, window: timedelta
) -> list[domain.ContainerSample]:
    """Sample the environment's running containers twice, ``window`` apart, for CPU rates."""
    owners = {c.container_id: c for c in env.containers if c.state is ContainerState.RUNNING}
    if not owners:
        return []
    first = {m.container_id: m for m in await runtime.metrics(list(owners))}
    await asyncio.sleep(window.total_seconds())
    samples = []
    for metrics in await runtime.metrics(list(owners)):
        owner = owners[metrics.container_id]
        before = first.get(metrics.container_id)
        cores = 0.0
        if before is not None:
            elapsed = (metrics.at - before.at).total_seconds() or window.total_seconds()
            cores = max(0.0, (metrics.cpu_usage_ns - before.cpu_usage_ns) / 1e9 / elapsed)
        samples.append(domain.ContainerSample(owner.service, owner.replica, metrics, round(cores, 4)))
    return sorted(samples, key=lambda s: (s.service, s.replica))
