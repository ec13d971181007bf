"""Who puts environments to sleep and who wakes them: the idle watch and the wake gates.

The idle watch reads, every ``check_interval``, how many connections each environment's published
ports have forwarded (one ``iptables-save -c`` for all of them; see ``network/iptables.py``). An
environment whose count has not moved for its ``sleep_after_idle`` (else the daemon's
``sleep.idle_after``) is stopped, with a condition naming the time of its last connection.
Environments without published ports have nothing to measure and are never put to sleep.

A sleeping environment has a wake gate on its published TCP ports (``network/wake.py``); the
first connection submits its start, and the gate forwards what it holds once the start is done.
UDP ports do not wake an environment: a datagram has no connection to hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from scheduler import domain, errors, log
from scheduler.domain import EnvironmentStatus
from scheduler.network.base import NetworkManager
from scheduler.network.wake import PortKey, Target, WakeGate
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.status import now

_log = log.get("sleep")

WATCHED = (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED)
"""Statuses in which an environment may fall asleep for being idle."""


@dataclass(frozen=True)
class SleepPolicy:
    """What the daemon's ``sleep`` settings say."""

    idle_after: timedelta = timedelta(0)
    """Default idle time before an environment sleeps; zero: never (an environment may set its own)."""
    check_interval: float = 10.0
    """Seconds between two readings of the connection counters."""
    wake_deadline: float = 60.0
    """Seconds a connection is held while its environment wakes; then it is closed."""
    max_pending: int = 64
    """Connections held at once per sleeping environment; more are closed at once."""


@dataclass
class _Seen:
    count: int
    since: float
    """Monotonic time the count last moved."""
    at: str
    """The same moment, as a wall-clock time for the condition message."""


class Sleeper:
    """Idle watch and wake gates; the orchestrator facade drives it."""

    def __init__(
        self,
        ledger: Ledger,
        network: NetworkManager,
        policy: SleepPolicy,
        *,
        submit_stop: Callable[[str, str, str], None],
        submit_start: Callable[[str, str], None],
        busy: Callable[[str], bool],
    ) -> None:
        self._ledger = ledger
        self._network = network
        self.policy = policy
        self._submit_stop = submit_stop
        self._submit_start = submit_start
        self._busy = busy
        self._gates: dict[str, WakeGate] = {}
        self._waking: set[str] = set()
        self._seen: dict[str, _Seen] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Hold the ports of environments that sleep (after a restart), and start watching for idle ones."""
        for env in self._ledger.all((EnvironmentStatus.STOPPED,)):
            self.asleep(env.name)
        self._task = asyncio.create_task(self._watch(), name="sleep:idle-watch")

    async def close(self) -> None:
        """Stop watching and close every gate (held connections end; the sockets stay with the network)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for name in list(self._gates):
            await self.forget(name)

    def gate(self, name: str) -> WakeGate | None:
        """The wake gate of ``name``, if it ever slept."""
        return self._gates.get(name)

    def asleep(self, name: str) -> None:
        """``name`` is going to sleep (its ports route nowhere any more): hold its published TCP ports."""
        self._waking.discard(name)
        self._seen.pop(name, None)
        gate = self._gates.get(name)
        if gate is None:
            listeners = self._network.listeners(name)
            if not listeners:
                return
            gate = self._gates[name] = WakeGate(
                name,
                listeners,
                lambda endpoint: self._wake(name, endpoint),
                max_pending=self.policy.max_pending,
                deadline=self.policy.wake_deadline,
            )
        gate.hold()

    def awake(self, name: str, targets: dict[PortKey, Target]) -> None:
        """``name`` is up again: forward what its gate holds."""
        self._waking.discard(name)
        gate = self._gates.get(name)
        if gate is not None:
            gate.forward(targets)

    def failed(self, name: str) -> None:
        """Waking ``name`` failed: close what its gate holds, and what comes."""
        self._waking.discard(name)
        gate = self._gates.get(name)
        if gate is not None:
            gate.refuse()

    async def forget(self, name: str) -> None:
        """``name`` is being deleted: close its gate before its ports are released."""
        self._waking.discard(name)
        self._seen.pop(name, None)
        gate = self._gates.pop(name, None)
        if gate is not None:
            await gate.close()

    def _wake(self, name: str, endpoint: domain.Endpoint) -> None:
        if name in self._waking:
            return
        env = self._ledger.find(name)
        if env is None or env.status is EnvironmentStatus.DELETING:
            return
        self._waking.add(name)
        _log.info("wake.connection", env=name, port=endpoint.host_port)
        try:
            self._submit_start(name, f"woken by a connection to {endpoint.host_ip}:{endpoint.host_port}")
        except errors.Unavailable:
            self._waking.discard(name)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.policy.check_interval)
            try:
                await self.check()
            except errors.SchedulerError as err:
                _log.warning("idle.check_failed", error=err.message)

    async def check(self) -> None:
        """Read the counters once and put to sleep what has been idle long enough."""
        envs = [e for e in self._ledger.all(WATCHED) if e.endpoints and self._idle_after(e) > timedelta(0)]
        if not envs:
            self._seen.clear()
            return
        counts = await self._network.connection_counts()
        clock = time.monotonic()
        watched = {e.name for e in envs}
        for gone in [n for n in self._seen if n not in watched]:
            del self._seen[gone]
        for env in envs:
            count = counts.get(env.name, 0)
            seen = self._seen.get(env.name)
            if seen is None or seen.count != count:
                self._seen[env.name] = _Seen(count, clock, now().isoformat(timespec="seconds"))
                continue
            idle_after = self._idle_after(env)
            if clock - seen.since < idle_after.total_seconds() or self._busy(env.name):
                continue
            del self._seen[env.name]
            _log.info("idle.sleep", env=env.name, since=seen.at)
            self._submit_stop(env.name, "Idle", f"no connection on its published ports since {seen.at}")

    def _idle_after(self, env: domain.Environment) -> timedelta:
        own = env.spec.sleep_after_idle
        return self.policy.idle_after if own is None else own
