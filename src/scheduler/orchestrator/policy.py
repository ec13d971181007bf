"""The supervisor's decisions as pure functions: whether to restart, how long to wait, what is wrong.

No I/O and no clock of their own, so they are tested by tables (``tests/unit/orchestrator``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from scheduler.domain import (
    Condition,
    ContainerState,
    DependencyCondition,
    Environment,
    Health,
    RestartMode,
    RestartPolicy,
)

# --- policy -------------------------------------------------------------------------------------


def should_restart(policy: RestartPolicy, exit_code: int | None, restarts: int) -> bool:
    """Whether a container that exited with ``exit_code`` after ``restarts`` restarts runs again.

    A stop on purpose never reaches this question, so ``always`` and ``unless-stopped`` agree. An
    unknown exit code (the task vanished) counts as a failure.
    """
    if policy.mode is RestartMode.NO:
        return False
    if policy.mode is RestartMode.ON_FAILURE:
        if exit_code == 0:
            return False
        return policy.max_retries == 0 or restarts < policy.max_retries
    return True


@dataclass
class Backoff:
    """Capped exponential restart delay of one container.

    The delay starts at ``initial_backoff`` and doubles with each restart up to ``max_backoff``;
    a process that ran ``reset_after`` (healthy, when it has a health check) starts over.
    """

    policy: RestartPolicy
    attempts: int = 0

    def next_delay(self, ran_for: float) -> float:
        """Seconds to wait before the next restart of a process that ran ``ran_for`` seconds."""
        if ran_for >= self.policy.reset_after.total_seconds():
            self.attempts = 0
        initial = self.policy.initial_backoff.total_seconds()
        cap = self.policy.max_backoff.total_seconds()
        delay: float = min(initial * 2.0 ** min(self.attempts, 60), cap)
        self.attempts += 1
        return max(delay, 0.0)


# --- status assessment --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Why one replica keeps its environment from being RUNNING."""

    service: str
    replica: int
    reason: str
    message: str


def problems(env: Environment, at: datetime) -> list[Problem]:
    """What is wrong with ``env``'s replicas at ``at``; empty when every one is up.

    A restarted replica counts as recovered once it is healthy, or (without a health check) once
    it ran its policy's ``reset_after``: a crash loop must not flap the environment to RUNNING
    between two crashes. A one-shot service that others wait to complete may exit 0.
    """
    specs = {s.name: s for s in env.spec.services}
    jobs = {d.service for s in env.spec.services for d in s.depends_on if d.condition is DependencyCondition.COMPLETED}
    found = []
    for c in sorted(env.containers, key=lambda c: (c.service, c.replica)):
        spec = specs.get(c.service)
        where = f"service {c.service} replica {c.replica}"
        restarts = f"restarted {c.restart_count} time{'s' if c.restart_count != 1 else ''}"
        last = f", last exit code {c.exit_code}" if c.exit_code is not None else ""
        # Between two crashes of a loop the replica is briefly up: still the same loop.
        looping = c.restart_count >= 2
        reason = "CrashLoopBackOff" if looping else "Restarting"
        cycling = f"{where} is crash-looping" if looping else where
        if c.state is ContainerState.RESTARTING:
            found.append(Problem(c.service, c.replica, reason, f"{cycling}: {c.message} ({restarts}{last})"))
        elif c.state is ContainerState.EXITED:
            if c.exit_code == 0 and c.service in jobs:
                continue
            found.append(Problem(c.service, c.replica, "Exited", f"{where}: {c.message} ({restarts}{last})"))
        elif c.state is ContainerState.UNKNOWN:
            found.append(Problem(c.service, c.replica, "Unknown", f"{where}: {c.message or 'state unknown'}"))
        elif c.state is ContainerState.RUNNING:
            if c.health is Health.UNHEALTHY:
                found.append(Problem(c.service, c.replica, "Unhealthy", f"{where} is unhealthy: {c.message}"))
            elif c.restart_count and c.health is Health.STARTING:
                found.append(Problem(c.service, c.replica, reason, f"{cycling}: waiting for health ({restarts}{last})"))
            elif c.restart_count and c.health is Health.NONE and spec is not None and c.started_at is not None:
                settle = spec.restart.reset_after
                if at - c.started_at < settle:
                    found.append(
                        Problem(
                            c.service,
                            c.replica,
                            reason,
                            f"{cycling}: up for less than {settle.total_seconds():g}s ({restarts}{last})",
                        )
                    )
    return found


def ready_condition(found: list[Problem], at: datetime) -> Condition:
    """The environment's ``Ready`` condition for the problems ``found``."""
    if not found:
        return Condition("Ready", True, "Recovered", "every service is up", last_transition=at)
    first = found[0]
    return Condition(
        "Ready", False, first.reason, "; ".join(p.message for p in found), service=first.service, last_transition=at
    )


__all__ = ["Backoff", "Problem", "problems", "ready_condition", "should_restart"]
