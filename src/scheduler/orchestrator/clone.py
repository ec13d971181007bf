"""Clone: a consistent copy of a running environment's volumes, taken while it keeps serving.

The copy is crash-consistent, like an atomic filesystem snapshot: every volume is copied once
while the source runs, then the source's containers that mount a volume are frozen (containerd
pause: the cgroup freezer, so no process of theirs runs and no write is half done), the files
changed since the first pass are brought up to date block by block, and the containers are
thawed. The freeze lasts as long as that second pass; requests reaching the source meanwhile
wait and are then served. PostgreSQL starts on such a copy as after a power cut and replays its
WAL to the last committed transaction; a CHECKPOINT through exec just before the first pass keeps
that replay short. Containers that mount no volume keep running throughout.

Credentials: a clone resolves its own specification, so a generated PostgreSQL password is new.
The copied data directory still holds the source's, so the copy carries a marker
(``pgscripts.CLONE_MARKER``) and the clone's PostgreSQL container starts through
``pgscripts.CLONE_PASSWORD``: in single-user mode, before the server listens, it replays the
copied WAL and sets the role's password from the container's own ``POSTGRES_PASSWORD``. The
marker holds no secret and stays until that succeeded, so a failed first start tries again.

A sleeping source (STOPPED: StopEnvironment, or idle) has no process writing its volumes, and
no wake can start one meanwhile (a wake is an operation of the same queue, so it waits for the
copy): one pass copies it consistently, with no checkpoint and no freeze. PostgreSQL was shut
down cleanly when it went to sleep, so the clone starts with nothing to replay.

Where the volumes' filesystem has reflinks (``volumes.filesystem: xfs-image``), both passes
clone files instead of copying them: the copy and the freeze cost metadata, whatever the size.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from scheduler import domain, errors, log
from scheduler.domain import ContainerState, Environment, EnvironmentSpec, EnvironmentStatus, ServiceSpec
from scheduler.orchestrator import pgscripts
from scheduler.orchestrator.backup import database_mount
from scheduler.orchestrator.templates import wrapped
from scheduler.runtime.base import ContainerRuntime
from scheduler.volumes.base import VolumeStore

_log = log.get("clone")

CHECKPOINT_TIMEOUT = timedelta(minutes=5)
FREEZE_ATTEMPTS = 5


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of an environment's volumes, staged beside the volumes."""

    source: str
    staging: Path
    volumes: tuple[str, ...]
    """Names of the volumes copied (each under ``staging``)."""
    paused: timedelta
    """How long the source's containers that mount volumes were frozen."""
    frozen: tuple[str, ...]
    """Services whose containers were frozen."""


CLONEABLE = frozenset({EnvironmentStatus.RUNNING, EnvironmentStatus.STOPPED})
"""Serving its latest specification, or asleep with it."""


def check_cloneable(env: Environment) -> None:
    """Refuse to copy an environment that is neither serving nor sleeping with its latest specification.

    Raises:
        FailedPrecondition: naming the environment and its status.
    """
    if env.status not in CLONEABLE:
        raise errors.FailedPrecondition(
            f"environment {env.name!r} is {env.status.value}; only a RUNNING or sleeping (STOPPED) environment "
            "can be cloned",
            env=env.name,
            reason="SOURCE_NOT_RUNNING",
        )
    if env.observed_generation != env.generation:
        raise errors.FailedPrecondition(
            f"environment {env.name!r} is rolling out generation {env.generation}; clone it once that is over",
            env=env.name,
            reason="SOURCE_NOT_RUNNING",
        )


class Cloner:
    """Takes snapshots of running environments and installs them as a new environment's volumes."""

    def __init__(self, runtime: ContainerRuntime, volumes: VolumeStore) -> None:
        self._runtime = runtime
        self._volumes = volumes

    async def snapshot(self, source: Environment) -> Snapshot:
        """Copy every volume of ``source`` consistently; the caller installs or discards the copy.

        Raises:
            FailedPrecondition: a container to freeze vanished meanwhile (the source changed).
        """
        names = sorted({v.name for s in source.spec.services for v in s.volumes})
        present = tuple([n for n in names if await asyncio.to_thread(self._volumes.exists, source.name, n)])
        writers = [s for s in source.spec.services if any(v.name in present and not v.read_only for v in s.volumes)]
        containers = [
            c.container_id
            for c in source.containers
            if c.state is ContainerState.RUNNING and c.service in {s.name for s in writers}
        ]
        asleep = source.status is EnvironmentStatus.STOPPED and not containers
        staging = await asyncio.to_thread(self._volumes.staging)
        try:
            started = time.monotonic()
            if not asleep:
                await self._checkpoint(source)
            checkpointed = time.monotonic()
            since = time.time()
            cloned = 0
            for name in present:
                cloned += (await asyncio.to_thread(self._volumes.copy_into, source.name, name, staging / name)).cloned
            copied = time.monotonic()
            paused = 0.0 if asleep else await self._frozen_pass(source.name, containers, present, staging, since)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._volumes.discard, staging))
            raise
        _log.info(
            "clone.snapshot",
            env=source.name,
            volumes=len(present),
            asleep=asleep,
            files_cloned=cloned,
            checkpoint_s=round(checkpointed - started, 3),
            first_pass_s=round(copied - checkpointed, 3),
            paused_ms=round(paused * 1000, 1),
        )
        return Snapshot(
            source.name, staging, present, timedelta(seconds=paused), tuple(sorted({s.name for s in writers}))
        )

    async def _frozen_pass(
        self, env: str, containers: list[str], volumes: tuple[str, ...], staging: Path, since: float
    ) -> float:
        frozen: list[str] = []
        started = time.monotonic()
        try:
            for container_id in containers:
                await self._freeze(env, container_id)
                frozen.append(container_id)
            for name in volumes:
                await asyncio.to_thread(self._volumes.copy_into, env, name, staging / name, since)
        finally:
            await asyncio.shield(self._thaw(frozen))
        return time.monotonic() - started

    async def _freeze(self, env: str, container_id: str) -> None:
        """Pause one container; runc gives up (and thaws) when a process stays in uninterruptible I/O."""
        for attempt in range(1, FREEZE_ATTEMPTS + 1):
            try:
                await self._runtime.pause(container_id)
                return
            except errors.NotFound as err:
                raise errors.FailedPrecondition(
                    f"container {container_id} of {env!r} stopped while it was being copied; retry", env=env
                ) from err
            except errors.Internal as err:
                if attempt == FREEZE_ATTEMPTS:
                    raise errors.Unavailable(
                        f"container {container_id} of {env!r} could not be frozen for the copy ({err.message}); retry",
                        env=env,
                    ) from err
                _log.info("clone.freeze_retry", env=env, container=container_id, error=err.message)
                await asyncio.sleep(0.1 * attempt)

    async def _thaw(self, containers: list[str]) -> None:
        for container_id in containers:
            try:
                await self._runtime.resume(container_id)
            except errors.NotFound:
                continue
            except errors.SchedulerError:
                _log.exception("clone.thaw_failed", container=container_id)

    async def _checkpoint(self, source: Environment) -> None:
        """Flush each database of ``source`` so that its clone has little WAL to replay."""
        for service in source.spec.services:
            if database_mount(service) is None:
                continue
            for container in source.containers:
                if container.service != service.name or container.state is not ContainerState.RUNNING:
                    continue
                user = service.env["POSTGRES_USER"]
                argv = ["psql", "-X", "-q", "-U", user, "-d", service.env.get("POSTGRES_DB", user), "-c", "CHECKPOINT"]
                try:
                    result = await self._runtime.exec(container.container_id, argv, timeout=CHECKPOINT_TIMEOUT)
                except errors.SchedulerError as err:
                    _log.warning("clone.checkpoint_failed", env=source.name, service=service.name, error=err.message)
                    continue
                if result.exit_code != 0:
                    _log.warning("clone.checkpoint_failed", env=source.name, service=service.name, error=result.output)

    async def install(self, snapshot: Snapshot, name: str, spec: EnvironmentSpec, source: EnvironmentSpec) -> list[str]:
        """Put the copied volumes in place as those of environment ``name``; return the volumes placed.

        Database volumes whose password the clone changes get the script that sets it.

        Raises:
            AlreadyExists: a volume of ``name`` exists already (volumes placed so far are removed).
        """
        old = {s.name: s for s in source.services}
        for service in spec.services:
            mount = database_mount(service)
            before = old.get(service.name)
            if mount is None or mount.name not in snapshot.volumes or before is None:
                continue
            if service.env.get("POSTGRES_PASSWORD") != before.env.get("POSTGRES_PASSWORD"):
                marker = snapshot.staging / mount.name / _pgdata_within(service, mount) / pgscripts.CLONE_MARKER
                await asyncio.to_thread(marker.write_bytes, b"")
        placed: list[str] = []
        try:
            for volume in snapshot.volumes:
                await asyncio.to_thread(self._volumes.adopt, name, volume, snapshot.staging / volume)
                placed.append(volume)
        except BaseException:
            for volume in placed:
                await asyncio.to_thread(self._volumes.remove, name, volume)
            raise
        finally:
            await asyncio.to_thread(self._volumes.discard, snapshot.staging)
        return placed

    async def discard(self, snapshot: Snapshot) -> None:
        """Drop a snapshot that will not be installed."""
        await asyncio.to_thread(self._volumes.discard, snapshot.staging)


async def first_start(volumes: VolumeStore, env: str, service: ServiceSpec, image: domain.Image) -> ServiceSpec:
    """``service`` wrapped to set its own database password first, when its volume is a fresh clone."""
    mount = database_mount(service)
    if mount is None:
        return service
    marker = volumes.path(env, mount.name) / _pgdata_within(service, mount) / pgscripts.CLONE_MARKER
    if not await asyncio.to_thread(marker.is_file):
        return service
    return wrapped(service, image.config, pgscripts.CLONE_PASSWORD)


def _pgdata_within(service: ServiceSpec, mount: domain.VolumeMount) -> str:
    """Where PGDATA lies inside its volume ("." when it is the volume itself)."""
    data = service.env.get("PGDATA", "/var/lib/postgresql/data").rstrip("/")
    return os.path.relpath(data, mount.path.rstrip("/") or "/")
