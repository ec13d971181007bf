"""The orchestrator: operations on environments, queued one at a time per environment.

It composes parts that each fit a screen and know nothing of each other: the operation queue
(``queue.py``), deploy (``deploy.py``), rollout: update, scale and rollback (``rollout.py``),
teardown (``teardown.py``), sleep and wake (``sleep.py``, driven by ``sleeper.py``), time-to-live
expiry (``expiry.py``) and metrics sampling (``sampling.py``), over the steps they share
(``steps.py``). The supervisor and the service see only this facade.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from scheduler import domain, errors, log
from scheduler.domain import Environment, EnvironmentStatus
from scheduler.network.base import NetworkManager
from scheduler.orchestrator.admission import for_host
from scheduler.orchestrator.backup import gated
from scheduler.orchestrator.clone import Cloner, Snapshot, check_cloneable
from scheduler.orchestrator.deploy import Deploy
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.expected import ExpectedExits
from scheduler.orchestrator.expiry import Expiry
from scheduler.orchestrator.ledger import Ledger, Owns, owns_all
from scheduler.orchestrator.observer import NULL_OBSERVER, Observer
from scheduler.orchestrator.queue import OperationQueue
from scheduler.orchestrator.rollout import Rollout
from scheduler.orchestrator.sampling import sample_metrics
from scheduler.orchestrator.sleep import Sleep
from scheduler.orchestrator.sleeper import Sleeper, SleepPolicy
from scheduler.orchestrator.steps import DeployFailure, OrchestratorSettings, container_id
from scheduler.orchestrator.teardown import Teardown
from scheduler.orchestrator.templates import Templates
from scheduler.retry import exponential, retry
from scheduler.runtime.base import ContainerRuntime
from scheduler.volumes.base import VolumeStore

__all__ = ["DeployFailure", "Orchestrator", "OrchestratorSettings", "container_id"]

_log = log.get("orchestrator")

DELETE_RETRIES = exponential(8, 0.2, 30.0)
"""Waits between the tries of a delete that failed (containerd restarting, a task slow to go), about
25 s in all; an environment still DELETING after the last is resumed at the next start."""


class Orchestrator:
    """Runs deploys, updates and deletions in the background, serialised per environment."""

    def __init__(
        self,
        ledger: Ledger,
        runtime: ContainerRuntime,
        network: NetworkManager,
        volumes: VolumeStore,
        events: EventBus,
        settings: OrchestratorSettings,
        observer: Observer = NULL_OBSERVER,
        sleep: SleepPolicy | None = None,
        templates: Templates | None = None,
        owns: Owns = owns_all,
    ) -> None:
        self._ledger = ledger
        self.owns = owns
        """Whether an environment is this daemon's to run (in a fleet: placed on this node)."""
        self._runtime = runtime
        self._settings = settings
        self.expected_exits = ExpectedExits()
        """Containers being stopped on purpose; the supervisor does not treat their exits as failures."""
        parts = (ledger, runtime, network, volumes, events, settings, observer, self.expected_exits)
        admission = for_host(settings.deploy_concurrency, settings.admission_hold)
        self._queue = OperationQueue(ledger, observer, admission)
        self._deploy = Deploy(*parts, templates=templates)
        self._rollout = Rollout(*parts, redeploy=self._deploy.run, templates=templates)
        self._teardown = Teardown(*parts, templates=templates)
        self._templates = templates
        self._volumes = volumes
        self._cloner = Cloner(runtime, volumes)
        self._expiry = Expiry(ledger, lambda name: self.submit_delete(name, keep_volumes=False))
        self._sleep = Sleep(*parts)
        self.sleeper = Sleeper(
            ledger,
            network,
            sleep or SleepPolicy(),
            submit_stop=self.submit_stop,
            submit_start=self.submit_start,
            busy=self.busy,
        )
        """Idle watch and wake gates."""

    async def start(self) -> None:
        """Resume operations a previous run left unfinished (deploys and deletions); start expiring."""
        for env in self._ledger.all():
            if not self.owns(env):
                continue
            if gated(env):
                _log.warning("resume.restore_interrupted", env=env.name)
            elif env.status in (EnvironmentStatus.PENDING, EnvironmentStatus.DEPLOYING):
                _log.info("resume.deploy", env=env.name)
                self.submit_deploy(env.name)
            elif env.status is EnvironmentStatus.DELETING:
                _log.info("resume.delete", env=env.name)
                self.submit_delete(env.name, keep_volumes=False)
        self._expiry.start()
        self.sleeper.start()

    async def close(self) -> None:
        """Cancel running operations; their environments are resumed by the next :meth:`start`."""
        await self._expiry.close()
        await self._queue.close()
        await self.sleeper.close()

    @property
    def logs_dir(self) -> Path:
        """Root of the per-container log directories."""
        return self._settings.logs_dir

    async def sample_metrics(self, env: Environment, window: timedelta) -> list[domain.ContainerSample]:
        """Sample the environment's running containers twice, ``window`` apart, for CPU rates."""
        return await sample_metrics(self._runtime, env, window)

    async def templates(self) -> list[domain.DataTemplate]:
        """The data-directory templates on the host (none when templates are not in use)."""
        return [] if self._templates is None else await self._templates.list()

    def _mine(self, name: str) -> bool:
        env = self._ledger.find(name)
        if env is None or self.owns(env):
            return True
        _log.debug("operation.elsewhere", env=name, node=env.node)
        return False

    def submit_deploy(self, name: str) -> None:
        """Deploy ``name`` in the background (unless another node runs it)."""
        if not self._mine(name):
            return
        self._queue.submit("deploy", name, lambda: self._deploy.run(name))

    def submit_update(
        self, name: str, previous: Environment, changes: list[domain.ServiceChange], drain: timedelta
    ) -> None:
        """Roll out the stored (new) spec of ``name`` in the background; ``previous`` is the rollback target."""
        if not self._mine(name):
            return
        self._queue.submit("update", name, lambda: self._rollout.run(name, previous, changes, drain))

    def submit_delete(self, name: str, keep_volumes: bool) -> None:
        """Delete ``name`` in the background, cancelling a deploy that is under way."""
        if not self._mine(name):
            return
        self._queue.submit("delete", name, lambda: self._delete(name, keep_volumes), preempt=True)

    async def _delete(self, name: str, keep_volumes: bool) -> None:
        """Tear ``name`` down, trying again promptly (with backoff) while a step fails."""

        def transient(err: Exception) -> bool:
            if isinstance(err, errors.SchedulerError):
                _log.warning("delete.retry", env=name, error=err.message)
                return True
            return False

        # The wake gate goes first: it must not accept on sockets the network is about to close.
        await self.sleeper.forget(name)
        await retry(lambda: self._teardown.run(name, keep_volumes), transient, DELETE_RETRIES)

    async def snapshot(self, name: str) -> Snapshot:
        """Copy ``name``'s volumes consistently, as an operation of its queue: no update or delete interleaves.

        Raises:
            NotFound: no such environment.
            FailedPrecondition: it is neither RUNNING nor asleep with its latest generation rolled out, or it was
                deleted (or the daemon stopped) while being copied.
        """
        result: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            try:
                env = await self._ledger.get(name)
                check_cloneable(env)
                snapshot = await self._cloner.snapshot(env)
            except asyncio.CancelledError:
                if not result.done():
                    result.set_exception(
                        errors.FailedPrecondition(f"environment {name!r} was deleted while being copied", env=name)
                    )
                raise
            except Exception as err:  # noqa: BLE001 - handed to the caller, who raises it
                if not result.done():
                    result.set_exception(err)
                return
            if result.done():  # the caller gave up meanwhile
                await self._cloner.discard(snapshot)
            else:
                result.set_result(snapshot)

        self._queue.submit("clone", name, body)
        try:
            return await asyncio.shield(result)
        except asyncio.CancelledError:
            if result.done() and not result.cancelled() and result.exception() is None:
                await self._cloner.discard(result.result())
            elif not result.done():
                result.cancel()
            raise

    async def install_snapshot(
        self, snapshot: Snapshot, name: str, spec: domain.EnvironmentSpec, source: domain.EnvironmentSpec
    ) -> list[str]:
        """Place a snapshot's volumes as those of the new environment ``name``; return their names."""
        return await self._cloner.install(snapshot, name, spec, source)

    async def remove_volumes(self, name: str, volumes: list[str]) -> None:
        """Remove volumes of an environment that was never stored (a clone that failed)."""
        for volume in volumes:
            await asyncio.to_thread(self._volumes.remove, name, volume)

    async def discard_snapshot(self, snapshot: Snapshot) -> None:
        """Drop a snapshot that will not be installed."""
        await self._cloner.discard(snapshot)

    def submit_stop(self, name: str, reason: str, message: str) -> None:
        """Put ``name`` to sleep in the background (``reason``: Requested or Idle)."""
        if not self._mine(name):
            return

        async def stop() -> None:
            await self._sleep.stop(name, reason, message, unrouted=lambda: self.sleeper.asleep(name))

        self._queue.submit("stop", name, stop)

    def submit_start(self, name: str, message: str) -> None:
        """Wake ``name`` in the background; its gate forwards held connections once it is up."""
        if not self._mine(name):
            return

        async def start() -> None:
            targets = await self._sleep.start(name, message)
            env = self._ledger.find(name)
            if (
                targets is None
                and env is not None
                and env.status in (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED)
            ):
                # Not stopped after all (a connection came while it was being stopped, or it was
                # started meanwhile): what the gate holds goes to the running containers.
                targets = await self._sleep.targets(name)
            if targets is not None:
                self.sleeper.awake(name, targets)
            elif env is not None and env.status is EnvironmentStatus.FAILED:
                self.sleeper.failed(name)

        self._queue.submit("start", name, start)

    def busy(self, name: str) -> bool:
        """Whether a deploy, update or delete runs on ``name`` (the supervisor then leaves its status alone)."""
        return self._queue.busy(name)

    async def wait_idle(self, name: str) -> None:
        """Wait until no operation runs on ``name`` (for tests and shutdown)."""
        await self._queue.wait_idle(name)
