"""PostgreSQL from a template: initdb once per image digest and parameters, a copy per environment.

PostgreSQL's first start (initdb, a temporary server, the restart) was 75-80% of a web-postgres
deploy. Here the first environment that needs a given image (by digest) and the parameters that
shape its data directory (user, database, locale, initdb arguments, host auth method) builds a
template once, in a container of its own (``pgscripts.BUILD``); every later environment's data
volume starts as a copy of it (``VolumeStore.seed``, about 0.1 s for 39 MB), and its container
runs ``pgscripts.CLONE_INIT`` before the image's entrypoint to set its own password and run its
init scripts on its copy. Neither the template nor any other environment holds its password.

Concurrency: builds are single-flight per key (twenty deploys at once wait for one initdb), and
a build appears only by the rename of a finished, flushed directory, so a crash mid-build leaves
a ``.build-*`` directory that is swept at start, and a container labelled ours with no
environment that the start-up reconciliation removes. A build that fails (an image that is not
PostgreSQL-like) is remembered for ``FAILED_BUILD_RETRY`` and its deploys meanwhile fall back to
the image's own first start.

A volume takes a spare (a whole copy made ahead, so a rename) while one is left. Where the
volumes' filesystem has no reflinks and no spare is left (a burst of creates), it is an overlay
on its template instead of a copy (``TemplateSettings.overlay``, ``scheduler.volumes.overlay``):
a mount, no bytes; the overlay's copy-up on the database's first writes costs it at start, so a
spare comes first.

Templates are listed (``ListTemplates``) and garbage-collected: one that no existing environment
was seeded from and that was not used for ``unused_after``, or whose image reference no longer
names its digest, is removed. Copies are independent of their template; a template that is the
lower layer of a volume is never removed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import functools
import hashlib
import json
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from scheduler import domain, errors, labels, log
from scheduler.domain import DataTemplate, ServiceSpec
from scheduler.orchestrator import pgscripts
from scheduler.orchestrator.backup import database_mount
from scheduler.runtime.base import ContainerRuntime
from scheduler.volumes.base import VolumeStore
from scheduler.volumes.templates import TemplateStore

_log = log.get("templates")
_T = TypeVar("_T")

TEMPLATE = labels.PREFIX + "template"
"""Label of a template build container: the template's key (such a container has no environment)."""
_PGDATA = "/var/lib/postgresql/data"
_NOT_TEMPLATED = ("POSTGRES_INITDB_WALDIR", "POSTGRES_USER_FILE", "POSTGRES_DB_FILE", "POSTGRES_INITDB_ARGS_FILE")
"""Variables that move data or hide key parameters in files: such services run the image's own first start."""
FAILED_BUILD_RETRY = timedelta(minutes=10)
"""A key whose build failed is not built again for this long: its deploys use the image's own first start."""
_VERSION = hashlib.sha256(pgscripts.BUILD.encode()).hexdigest()[:12]
"""Part of every key: a change to the build script makes new templates."""
COPIERS = 2
"""Threads that seed volumes and make spares: copies beyond two at once on a two-core host only
share the disk and the CPU, and they had the event loop's shared thread pool (six threads)
to themselves. Twenty deploys at once made eighteen copies, each held a pool thread for
1.2-2.2 s, and every ledger write of every deploy (the store is written from that pool)
waited behind them: the last PostgreSQL container was created 8 s after its copy began."""


@dataclasses.dataclass(frozen=True)
class TemplateSettings:
    """How templates are used and collected."""

    enabled: bool = True
    unused_after: timedelta = timedelta(hours=24)
    """A template no existing environment was seeded from is removed after this long unused."""
    gc_interval: timedelta = timedelta(minutes=10)
    spares: int = 2
    """Copies of each template kept ready, so that a new volume costs a rename instead of a copy."""
    spare_delay: timedelta = timedelta(seconds=2)
    """Wait after a seed before copying its replacement: deploys under way need the disk and CPU first."""
    build_timeout: timedelta = timedelta(minutes=5)
    overlay: bool = False
    """Seed volumes as overlays on their template (``VolumeStore.layer``) instead of copies, where
    the volume needs it at its root and no spare is left. Off where copies are reflinks."""


@dataclasses.dataclass(frozen=True)
class _Plan:
    key: str
    mount: domain.VolumeMount
    subpath: str
    parameters: dict[str, str]
    env: dict[str, str]


def plan(service: ServiceSpec, image: domain.Image) -> _Plan | None:
    """Whether ``service`` can start from a template, and from which one; None when it cannot.

    It can when it sets the official image's variables (``POSTGRES_USER``), keeps ``PGDATA`` on a
    writable named volume, puts no WAL elsewhere and reads no key parameter from a file
    (``_NOT_TEMPLATED``; ``POSTGRES_PASSWORD_FILE`` is fine: the password is not in the key).
    """
    env = dict(e.split("=", 1) for e in image.config.env if "=" in e)
    env.update(service.env)
    mount = database_mount(service)
    if mount is None or mount.read_only or any(env.get(v) for v in _NOT_TEMPLATED):
        return None
    pgdata = env.get("PGDATA", _PGDATA).rstrip("/")
    subpath = pgdata[len(mount.path.rstrip("/")) :].strip("/")
    user = env.get("POSTGRES_USER") or "postgres"
    parameters = {
        "user": user,
        "database": env.get("POSTGRES_DB") or user,
        "locale": env.get("LC_ALL") or env.get("LANG") or "C.UTF-8",
        "initdb_args": env.get("POSTGRES_INITDB_ARGS", ""),
        "host_auth_method": env.get("POSTGRES_HOST_AUTH_METHOD") or "scram-sha-256",
    }
    material = json.dumps({"kind": "postgres", "v": _VERSION, "digest": image.digest, **parameters}, sort_keys=True)
    key = hashlib.sha256(material.encode()).hexdigest()[:32]
    build_env = {
        "POSTGRES_USER": parameters["user"],
        "POSTGRES_DB": parameters["database"],
        "POSTGRES_INITDB_ARGS": parameters["initdb_args"],
        "POSTGRES_HOST_AUTH_METHOD": parameters["host_auth_method"],
        "SCHEDULER_TEMPLATE_LOCALE": parameters["locale"],
        "SCHEDULER_TEMPLATE_DATA": pgscripts.BUILD_MOUNT,
    }
    return _Plan(key, mount, subpath, parameters, build_env)


def wrapped(service: ServiceSpec, image: domain.ImageConfig, script: str = pgscripts.CLONE_INIT) -> ServiceSpec:
    """``service`` with its process run through ``script`` first (Docker's entrypoint + cmd rule)."""
    entrypoint = service.command or image.entrypoint
    cmd = service.args or (() if service.command else image.cmd)
    return dataclasses.replace(
        service, command=("/bin/sh", "-c", script, "scheduler-first-start"), args=(*entrypoint, *cmd)
    )


class Templates:
    """Builds, seeds from, lists and collects templates; see the module docstring."""

    def __init__(
        self,
        store: TemplateStore,
        volumes: VolumeStore,
        runtime: ContainerRuntime,
        settings: TemplateSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._volumes = volumes
        self._runtime = runtime
        self.settings = settings
        self._clock = clock
        self._builds: dict[str, asyncio.Task[Path | None]] = {}
        self._failed: dict[str, datetime] = {}
        self._seeding: Counter[str] = Counter()
        """Keys being copied from right now: the collector leaves them alone."""
        self._removals: dict[str, asyncio.Future[None]] = {}
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._copier = ThreadPoolExecutor(max_workers=COPIERS, thread_name_prefix="template-copy")
        self._layering = settings.overlay
        """Whether seeds are overlays: turned off for good when the host cannot mount one."""

    async def _copying(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work`` (a copy, or a seed that may copy) on the copiers' threads, not the shared pool."""
        return await asyncio.get_running_loop().run_in_executor(self._copier, functools.partial(work, *args))

    async def start(self) -> None:
        """Sweep what a crash left mid-build (no build runs yet); mount the layered volumes a reboot unmounted."""
        swept = await asyncio.to_thread(self._store.sweep)
        if swept:
            _log.info("templates.swept", builds=swept)
        mounted, failed = await asyncio.to_thread(self._volumes.remount_layers)
        if mounted:
            _log.info("templates.remounted", volumes=mounted)
        if failed:  # their environments' deploys fail and say so (FailedPrecondition)
            _log.error("templates.remount_failed", volumes=failed)

    async def prepare(self, env: str, service: ServiceSpec, image: domain.Image) -> ServiceSpec:
        """Seed ``service``'s new data volume from its template; returns the service to run.

        The returned spec runs ``CLONE_INIT`` when the volume holds a copy not started yet (a
        copy made now, or one whose first start failed); otherwise it is ``service`` unchanged.
        A volume that already has data is never touched.
        """
        if not self.settings.enabled:
            return service
        found = plan(service, image)
        if found is None:
            return service
        self._seeding[found.key] += 1
        try:
            if found.key in self._removals:
                await asyncio.shield(self._removals[found.key])
            # The whole filesystem part in one thread hop: on a loaded host each hop costs.
            outcome = await self._copying(self._seed, env, found)
            if outcome is None:
                if await self._template(found, image) is None:
                    return service
                outcome = await self._copying(self._seed, env, found)
        finally:
            self._seeding[found.key] -= 1
        if outcome is None:
            return service
        seeded, first_start = outcome
        if seeded:
            _log.info("templates.seeded", env=env, service=service.name, template=found.key, how=seeded)
            self._refill(found.key)
        return wrapped(service, image.config) if first_start else service

    def _seed(self, env: str, found: _Plan) -> tuple[str, bool] | None:
        """Seed the volume if it is new: (how it was seeded or "", whether its first start is to come).

        None when it is new and there is no template yet.
        """
        volume = self._volumes.path(env, found.mount.name)
        marker = volume.joinpath(found.subpath, pgscripts.MARKER) if found.subpath else volume / pgscripts.MARKER
        if _has_data(volume):
            return "", marker.is_file()
        data = self._store.data(found.key)
        if data is None:
            return None
        # A spare first (a rename, and the database then writes to plain files); an overlay when
        # none is left (a burst: a mount instead of a copy each); a copy where overlays cannot be.
        spare = self._store.claim_spare(found.key)
        if spare is None and self._layering and not found.subpath:
            try:
                seeded = self._volumes.layer(env, found.mount.name, data)
            except OSError as err:
                _log.warning("templates.overlay_failed", template=found.key, error=str(err), fallback="copy")
                self._layering = False
            else:
                if seeded:
                    self._store.use(found.key, env, self._clock())
                return ("overlay" if seeded else ""), marker.is_file()
        try:
            seeded = self._volumes.seed(env, found.mount.name, spare or data, found.subpath, move=spare is not None)
        finally:
            if spare is not None:
                shutil.rmtree(spare, ignore_errors=True)  # still there only if it was not used
        if seeded:
            self._store.use(found.key, env, self._clock())
        return ("spare" if spare else "copy") if seeded else "", marker.is_file()

    def _refill(self, key: str) -> None:
        """Make spares of ``key`` in the background, after the deploys under way had the machine."""
        if self.settings.spares <= 0 or key in self._refills:
            return

        async def refill() -> None:
            await asyncio.sleep(self.settings.spare_delay.total_seconds())
            try:
                while await asyncio.to_thread(self._store.spares, key) < self.settings.spares:
                    if not await self._copying(self._store.add_spare, key):
                        return
            except OSError as err:
                _log.warning("templates.spare_failed", template=key, error=str(err))

        task = asyncio.create_task(refill(), name=f"spares-{key[:12]}")
        self._refills[key] = task
        task.add_done_callback(lambda _: self._refills.pop(key, None))

    async def close(self) -> None:
        """Stop making spares (a partial one is swept at the next start)."""
        tasks = list(self._refills.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._copier.shutdown(wait=False, cancel_futures=True)

    async def _template(self, found: _Plan, image: domain.Image) -> Path | None:
        failed = self._failed.get(found.key)
        if failed is not None and self._clock() - failed < FAILED_BUILD_RETRY:
            return None
        task = self._builds.get(found.key)
        if task is None:
            task = asyncio.create_task(self._build(found, image), name=f"template-{found.key[:12]}")
            self._builds[found.key] = task
            task.add_done_callback(lambda _: self._builds.pop(found.key, None))
        # Shielded: one deploy cancelled (deleted meanwhile) must not cancel the build others wait on.
        return await asyncio.shield(task)

    async def _build(self, found: _Plan, image: domain.Image) -> Path | None:
        # Another build may have finished between the caller's look and this task's start.
        ready = await asyncio.to_thread(self._store.data, found.key)
        if ready is not None:
            return ready
        build = await asyncio.to_thread(self._store.begin)
        cid = f"template.{found.key[:12]}.{secrets.token_hex(3)}"
        config = domain.ContainerConfig(
            id=cid,
            image=image,
            labels={labels.OWNER: labels.OWNER_VALUE, TEMPLATE: found.key},
            command=("/bin/sh", "-c", pgscripts.BUILD, "scheduler-template"),
            env=found.env,
            mounts=(domain.Mount(pgscripts.BUILD_MOUNT, str(build.data), options=("rbind", "rw")),),
            resources=domain.Resources(memory_bytes=1024**3, pids=512),
            log_dir=str(build.work),
        )
        started = self._clock()
        try:
            await self._runtime.create(config)
            try:
                await self._runtime.start(cid)
                async with asyncio.timeout(self.settings.build_timeout.total_seconds()):
                    status = await self._runtime.wait(cid)
            finally:
                with contextlib.suppress(errors.SchedulerError):
                    await self._runtime.delete(cid)
            if status.code != 0:
                raise errors.Internal(f"exit code {status.code}: {_tail(build.work / 'stderr.log')}")
            template = DataTemplate(
                key=found.key,
                kind="postgres",
                image=image.name,
                image_digest=image.digest,
                parameters=found.parameters,
                created_at=started,
                last_used_at=started,
            )
            template = await asyncio.to_thread(self._store.commit, build, template)
        except (errors.SchedulerError, OSError, TimeoutError) as err:
            await asyncio.to_thread(self._store.abandon, build)
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            self._failed[found.key] = self._clock()
            _log.warning("templates.build_failed", template=found.key, image=image.name, error=message)
            return None
        except BaseException:
            await asyncio.to_thread(self._store.abandon, build)
            raise
        seconds = (self._clock() - started).total_seconds()
        _log.info("templates.built", template=found.key, image=image.name, seconds=round(seconds, 3))
        self._refill(found.key)
        return await asyncio.to_thread(self._store.data, template.key)

    async def list(self) -> list[DataTemplate]:
        """Every template on the host, oldest first."""
        return await asyncio.to_thread(self._store.list)

    async def collect(self, environments: Iterable[str]) -> builtins.list[str]:
        """Remove templates nobody uses (see the module docstring); returns the keys removed."""
        existing = set(environments)
        removed = []
        layered = await asyncio.to_thread(self._volumes.lowers)
        for template in await self.list():
            if template.key in self._builds or template.key in self._refills or self._seeding[template.key]:
                continue
            if await asyncio.to_thread(self._store.data, template.key) in layered:
                continue  # the lower layer of a volume: removing it would empty that volume
            for gone in set(template.environments) - existing:
                await asyncio.to_thread(self._store.forget, template.key, gone)
            in_use = bool(set(template.environments) & existing)
            stale = self._clock() - template.last_used_at >= self.settings.unused_after
            why = "" if in_use else "unused" if stale else ""
            if not why and not in_use and not await self._image_present(template):
                why = "image gone"
            if why and not self._seeding[template.key]:  # checked again: a seed may have begun meanwhile
                removal = asyncio.ensure_future(asyncio.to_thread(self._store.remove, template.key))
                self._removals[template.key] = removal
                try:
                    await removal
                finally:
                    del self._removals[template.key]
                _log.info("templates.removed", template=template.key, image=template.image, reason=why)
                removed.append(template.key)
        return removed

    async def _image_present(self, template: DataTemplate) -> bool:
        try:
            image = await self._runtime.ensure_image(template.image, domain.PullPolicy.NEVER)
        except errors.NotFound:
            return False
        except errors.SchedulerError:
            return True  # cannot tell now: keep it
        return image.digest == template.image_digest

    async def run_collector(self, environments: Callable[[], Iterable[str]]) -> None:
        """Collect every ``gc_interval`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.gc_interval.total_seconds())
            try:
                await self.collect(environments())
            except (errors.SchedulerError, OSError) as err:
                _log.warning("templates.collect_failed", error=str(err))


def _has_data(volume: Path) -> bool:
    return volume.is_dir() and any(volume.iterdir())


def _tail(path: Path, limit: int = 600) -> str:
    """The last lines of a log writer's file, without their timestamp and stream tags."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    lines = [line.split(" ", 3)[-1] for line in text.splitlines()[-8:]]
    return " | ".join(lines)[-limit:] or "(no output)"
