"""Teardown: remove every trace of an environment, then the environment itself.

An environment is gone only once its containers, network, logs and (unless kept) volumes are;
the record is removed last, so an interrupted delete is resumed at the next start.
"""

from __future__ import annotations

import asyncio

from scheduler import domain, errors, labels, log
from scheduler.domain import Environment, Event, EventType, HistoryEntry
from scheduler.orchestrator.logs import remove_logs
from scheduler.orchestrator.status import now
from scheduler.orchestrator.steps import Steps

_log = log.get("orchestrator")


class Teardown(Steps):
    """Deletes one environment."""

    async def run(self, name: str, keep_volumes: bool) -> None:
        """Remove ``name``'s containers, network, logs and (unless ``keep_volumes``) volumes, then its record."""
        try:
            env: Environment | None = await self._ledger.get(name)
        except errors.NotFound:
            env = None
        placeholder = Environment(name=name, uid="", spec=domain.EnvironmentSpec(stack="", services=()))
        await self._remove_containers(name, env or placeholder)
        # Gone means gone from containerd: a container still listed (its task or record survived a
        # failed step) fails this try, and the orchestrator tries again.
        left = [info.id for info in await self._runtime.list({labels.ENV: name})]
        if left:
            raise errors.Unavailable(f"environment {name!r}: containers {left} are still present", env=name)
        await self._network.delete_environment(name)
        await asyncio.to_thread(remove_logs, self._settings.logs_dir, name)
        if not keep_volumes:
            await asyncio.to_thread(self._volumes.remove_environment, name)
        await self._ledger.remove(name)
        await self._ledger.append_history(
            HistoryEntry(
                env=name,
                generation=env.generation if env else 0,
                at=now(),
                actor="scheduler",
                action="deleted",
                detail="volumes kept" if keep_volumes else "",
            )
        )
        self._events.publish(Event(EventType.ENVIRONMENT_DELETED, name, now(), generation=env.generation if env else 0))
        _log.info("delete.done", env=name)
