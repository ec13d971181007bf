"""Per-service progress of a deployment, as ``--wait`` shows it on a terminal."""

from __future__ import annotations

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb


def phases(env: pb.Environment, services: list[str]) -> dict[str, str]:
    """What each service (replica) is doing, in words: ``starting``, ``waiting for health``, ``healthy``...

    ``services`` are the stack's services: those without a container yet are ``pending`` (their
    image being pulled, or their dependencies not healthy yet).
    """
    found: dict[str, str] = {service: "pending" for service in services}
    waiting = {
        c.service: c.message for c in env.conditions if c.service and c.status != pb.CONDITION_STATUS_TRUE and c.message
    }
    for c in env.containers:
        if c.state == pb.CONTAINER_STATE_RUNNING:
            if c.health == pb.HEALTH_STATUS_HEALTHY:
                phase = "healthy"
            elif c.health == pb.HEALTH_STATUS_UNHEALTHY:
                phase = "unhealthy"
            elif c.health == pb.HEALTH_STATUS_STARTING:
                phase = "waiting for health"
            else:
                phase = "running"
        elif c.state == pb.CONTAINER_STATE_CREATED:
            phase = "starting"
        elif c.state in (pb.CONTAINER_STATE_EXITED, pb.CONTAINER_STATE_STOPPED):
            phase = "exited" + (f" ({c.exit_code})" if c.HasField("exit_code") else "")
        else:
            phase = "creating"
        found.pop(c.service, None)
        found[c.service if c.replica == 0 else f"{c.service}-{c.replica}"] = phase
    for service, message in waiting.items():
        if found.get(service) not in ("healthy", "running"):
            found[service] = f"{found.get(service, 'pending')}: {message}"
    return found


class Progress:
    """Prints a line each time a service's phase changes (nothing when nothing changed)."""

    def __init__(self, services: list[str]) -> None:
        self._services = services
        self._last: dict[str, str] = {}

    def lines(self, env: pb.Environment) -> list[str]:
        """The changes since the previous call, one ``  SERVICE  PHASE`` line each."""
        now = phases(env, self._services)
        changed = [(s, p) for s, p in now.items() if self._last.get(s) != p]
        self._last = now
        width = max((len(s) for s in now), default=0)
        return [f"  {service.ljust(width)}  {phase}" for service, phase in changed]
