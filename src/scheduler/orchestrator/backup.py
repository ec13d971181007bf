"""Backup and restore of one environment: an archive with a manifest and checksums.

An archive (``<root>/<env>/<env>-<UTC time>.tar``) holds ``manifest.json`` (format, what is
inside, and the SHA-256 and size of every other member), ``environment.json`` (the stored
environment, spec and request as the store keeps them), ``history.json`` (its audit trail),
``volumes/<name>.tar.gz`` for each volume, and ``databases/<service>.sql`` for each PostgreSQL
service.

PostgreSQL is copied with ``pg_dump`` run through exec in the running container: one
transaction-consistent snapshot of the service's database, taken without stopping anything
(the data volume's files, copied while the server writes, would not be consistent, so that
volume is not archived raw). Other volumes are archived as they are on disk, the way a file
copy of a running service would be. A restore checks every checksum before it touches anything,
creates the environment (under its old name or a new one), puts the volumes back, deploys it,
and loads each database dump with ``psql`` once the service is healthy.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler import domain, errors, log, openssl
from scheduler.domain import ContainerState, Environment, EnvironmentStatus, HistoryEntry, ServiceSpec
from scheduler.orchestrator.status import now
from scheduler.runtime.base import ContainerRuntime
from scheduler.storage import codec
from scheduler.storage.base import StateStore
from scheduler.volumes.base import VolumeStore

if TYPE_CHECKING:
    import tarfile  # imported by the backups and restores that use it, not at every daemon start

_log = log.get("backup")

FORMAT = 1
_ARCHIVE = re.compile(r"^[a-z0-9][a-z0-9-]*-\d{8}T\d{6}Z\.tar$")
_DUMP_FILE = ".scheduler-backup.sql"
DUMP_TIMEOUT = timedelta(minutes=30)


def database_mount(service: ServiceSpec) -> domain.VolumeMount | None:
    """The data volume of a PostgreSQL service (one that sets POSTGRES_USER), or None."""
    if "POSTGRES_USER" not in service.env:
        return None
    data = service.env.get("PGDATA", "/var/lib/postgresql/data")
    return next((v for v in service.volumes if data == v.path or data.startswith(v.path.rstrip("/") + "/")), None)


def _sha256(path: Path) -> str:
    digest = openssl.hasher("sha256")
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Backups:
    """Writes, lists, prunes and restores environment archives under ``root``."""

    def __init__(self, store: StateStore, runtime: ContainerRuntime, volumes: VolumeStore, root: Path) -> None:
        self._store = store
        self._runtime = runtime
        self._volumes = volumes
        self.root = Path(root)

    # --- backup ------------------------------------------------------------------------------

    async def backup(self, name: str) -> domain.BackupInfo:
        """Archive environment ``name``; it must be running if it has databases.

        Raises:
            NotFound: no such environment.
            FailedPrecondition: a database service has no running container to dump from.
        """
        env = await self._store.get(name)
        history = await self._store.history(name)
        at = now()
        directory = self.root / name
        await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as raw:
            staging = Path(raw)
            files: dict[str, Path] = {}
            (staging / "environment.json").write_text(codec.environment_to_json(env))
            (staging / "history.json").write_text(
                json.dumps([json.loads(codec.history_to_json(e)) for e in history], indent=1)
            )
            files["environment.json"] = staging / "environment.json"
            files["history.json"] = staging / "history.json"
            databases = []
            skip: set[str] = set()
            for service in env.spec.services:
                mount = database_mount(service)
                if mount is None:
                    continue
                target = staging / f"{service.name}.sql"
                await self._dump(env, service, mount, target)
                files[f"databases/{service.name}.sql"] = target
                databases.append({"service": service.name, "volume": mount.name, "path": mount.path})
                skip.add(mount.name)
            volumes = sorted({v.name for s in env.spec.services for v in s.volumes} - skip)
            for volume in volumes:
                if await asyncio.to_thread(self._volumes.exists, name, volume):
                    target = staging / f"{volume}.tar.gz"
                    await asyncio.to_thread(self._volumes.backup, name, volume, target)
                    files[f"volumes/{volume}.tar.gz"] = target
            manifest = {
                "format": FORMAT,
                "environment": name,
                "created_at": at.isoformat(),
                "generation": env.generation,
                "databases": databases,
                "volumes": [v for v in volumes if f"volumes/{v}.tar.gz" in files],
                "files": {
                    member: {"sha256": await asyncio.to_thread(_sha256, path), "size": path.stat().st_size}
                    for member, path in files.items()
                },
            }
            archive = directory / f"{name}-{at.strftime('%Y%m%dT%H%M%SZ')}.tar"
            if archive.exists():
                archive = directory / f"{name}-{(at + timedelta(seconds=1)).strftime('%Y%m%dT%H%M%SZ')}.tar"
            await asyncio.to_thread(_write_archive, archive, manifest, files)
        _log.info("backup.done", env=name, archive=str(archive), size=archive.stat().st_size)
        return _info(archive, manifest)

    async def _dump(self, env: Environment, service: ServiceSpec, mount: domain.VolumeMount, target: Path) -> None:
        container = next(
            (c for c in env.containers if c.service == service.name and c.state is ContainerState.RUNNING), None
        )
        if container is None:
            raise errors.FailedPrecondition(
                f"service {service.name} of {env.name!r} has no running container to dump its database from",
                env=env.name,
                service=service.name,
            )
        inside = f"{mount.path.rstrip('/')}/{_DUMP_FILE}"
        on_host = self._volumes.path(env.name, mount.name) / _DUMP_FILE
        user = service.env["POSTGRES_USER"]
        database = service.env.get("POSTGRES_DB", user)
        argv = ["pg_dump", "-U", user, "-d", database, "--clean", "--if-exists", "--no-owner", "-f", inside]
        try:
            result = await self._runtime.exec(container.container_id, argv, timeout=DUMP_TIMEOUT)
            if result.exit_code != 0:
                raise errors.FailedPrecondition(
                    f"pg_dump in service {service.name} exited with {result.exit_code}: {result.output.strip()[-300:]}",
                    env=env.name,
                    service=service.name,
                )
            await asyncio.to_thread(shutil.copyfile, on_host, target)
        finally:
            on_host.unlink(missing_ok=True)

    # --- listing and retention ------------------------------------------------------------------

    def list(self, name: str) -> list[domain.BackupInfo]:
        """Archives of ``name``, newest first (an environment deleted since keeps its archives)."""
        directory = self.root / name
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.iterdir(), reverse=True):
            if _ARCHIVE.match(path.name):
                try:
                    found.append(_info(path, _read_manifest(path)))
                except errors.InvalidArgument:
                    _log.warning("backup.unreadable", archive=str(path))
        return found

    def prune(self, name: str, keep: int) -> builtins.list[str]:
        """Delete all but the ``keep`` newest archives of ``name``; return the ids removed."""
        removed = []
        for info in self.list(name)[keep:]:
            (self.root / info.id).unlink(missing_ok=True)
            removed.append(info.id)
        return removed

    def locate(self, backup_id: str) -> Path:
        """The archive a backup id (``<env>/<file>``) names.

        Raises:
            InvalidArgument: naming ``backup`` when the id is malformed.
            NotFound: there is no such archive.
        """
        env, _, file = backup_id.partition("/")
        if not env or not _ARCHIVE.match(file) or not file.startswith(env + "-") or "/" in file:
            raise errors.InvalidArgument.of(
                [
                    errors.FieldViolation(
                        "backup", f"{backup_id!r} is not a backup id like demo/demo-20260101T000000Z.tar"
                    )
                ]
            )
        path = self.root / env / file
        if not path.is_file():
            raise errors.NotFound(f"backup {backup_id!r} not found", backup=backup_id)
        return path

    # --- restore ---------------------------------------------------------------------------------

    def open(self, backup_id: str) -> tuple[Path, dict[str, Any], Environment, builtins.list[HistoryEntry]]:
        """Check an archive's checksums and read its environment and history.

        Raises:
            InvalidArgument: naming ``backup`` when the archive is damaged or of another format.
        """
        path = self.locate(backup_id)
        manifest = _read_manifest(path)
        with _reading(path) as archive:
            for member, expected in manifest["files"].items():
                digest = openssl.hasher("sha256")
                size = 0
                for block in _member_blocks(archive, member):
                    digest.update(block)
                    size += len(block)
                if digest.hexdigest() != expected["sha256"] or size != expected["size"]:
                    raise _damaged(backup_id, f"{member} does not match its checksum")
            env = codec.environment_from_json(_read_text(archive, "environment.json"))
            history = [codec.history_from_json(json.dumps(e)) for e in json.loads(_read_text(archive, "history.json"))]
        return path, manifest, env, history

    async def stage(self, path: Path, manifest: dict[str, Any], name: str) -> None:
        """Put the archive's volumes in place for environment ``name`` (which must not run yet)."""
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".restore-") as raw:
            scratch = Path(raw)
            with _reading(path) as archive:
                for volume in manifest["volumes"]:
                    target = scratch / f"{volume}.tar.gz"
                    with target.open("wb") as out:
                        for block in _member_blocks(archive, f"volumes/{volume}.tar.gz"):
                            out.write(block)
                    await asyncio.to_thread(self._volumes.restore, name, volume, target)

    async def load_databases(self, path: Path, manifest: dict[str, Any], name: str) -> None:
        """Load each database dump into the (running, healthy) restored environment."""
        env = await self._store.get(name)
        for database in manifest["databases"]:
            service = next(s for s in env.spec.services if s.name == database["service"])
            container = next(
                (c for c in env.containers if c.service == service.name and c.state is ContainerState.RUNNING), None
            )
            if container is None:
                raise errors.FailedPrecondition(f"service {service.name} of {name!r} is not running", env=name)
            on_host = self._volumes.path(name, database["volume"]) / _DUMP_FILE
            with _reading(path) as archive, on_host.open("wb") as out:
                for block in _member_blocks(archive, f"databases/{service.name}.sql"):
                    out.write(block)
            os.chmod(on_host, 0o644)  # read by psql as whatever user exec runs as; the env dir is 0700
            user = service.env["POSTGRES_USER"]
            inside = f"{database['path'].rstrip('/')}/{_DUMP_FILE}"
            argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", service.env.get("POSTGRES_DB", user)]
            try:
                result = await self._runtime.exec(container.container_id, [*argv, "-f", inside], timeout=DUMP_TIMEOUT)
            finally:
                on_host.unlink(missing_ok=True)
            if result.exit_code != 0:
                raise errors.FailedPrecondition(
                    f"loading the database of {service.name} failed ({result.exit_code}): "
                    f"{result.output.strip()[-300:]}",
                    env=name,
                    service=service.name,
                )

    @staticmethod
    def renamed(
        env: Environment, name: str, history: builtins.list[HistoryEntry]
    ) -> tuple[Environment, builtins.list[HistoryEntry]]:
        """The archived environment as a new one named ``name``, pending its deploy."""
        fresh = replace(
            env,
            name=name,
            uid=str(uuid.uuid4()),
            status=EnvironmentStatus.PENDING,
            containers=(),
            endpoints=(),
            conditions=(),
            observed_generation=0,
            created_at=now(),
            updated_at=now(),
            request_id="",
        )
        return fresh, [replace(e, env=name) for e in history]


RESTORING = "Restoring"
"""Condition type of an environment claimed by a restore whose volumes are being put in place.

Like a Kubernetes scheduling gate, it holds the deploy back: the name is claimed first (the
store's create-if-absent, etcd's in a fleet), so of a restore and a create of one name on two
nodes exactly one wins and the loser touched no volume; the restore lifts it once staged.
"""


def restoring(backup_id: str, node: str) -> domain.Condition:
    """The ``Restoring`` gate of an environment restored from ``backup_id`` (on ``node`` in a fleet)."""
    where = f" on node {node!r}" if node else ""
    return domain.Condition(
        RESTORING,
        True,
        "StagingVolumes",
        f"restore from backup {backup_id}{where} since {now().isoformat(timespec='seconds')}: its volumes are"
        " being put in place; if that daemon restarted meanwhile, delete this environment and restore again",
        last_transition=now(),
    )


def gated(env: domain.Environment) -> bool:
    """Whether a restore still holds ``env``'s deploy back (see ``RESTORING``)."""
    return any(c.type == RESTORING and c.status for c in env.conditions)


def ungated(env: domain.Environment) -> domain.Environment:
    """``env`` with its ``Restoring`` gate lifted."""
    return replace(env, conditions=tuple(c for c in env.conditions if c.type != RESTORING))


def _info(path: Path, manifest: dict[str, Any]) -> domain.BackupInfo:
    return domain.BackupInfo(
        id=f"{path.parent.name}/{path.name}",
        environment=str(manifest["environment"]),
        created_at=datetime.fromisoformat(manifest["created_at"]).astimezone(UTC),
        size_bytes=path.stat().st_size,
        volumes=tuple(manifest["volumes"]),
        databases=tuple(d["service"] for d in manifest["databases"]),
    )


def _write_archive(archive: Path, manifest: dict[str, Any], files: dict[str, Path]) -> None:
    import tarfile

    partial = archive.with_name(f".{archive.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:") as tar:
            body = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(body)
            info.mtime = int(datetime.now(UTC).timestamp())
            tar.addfile(info, io.BytesIO(body))
            for member, path in files.items():
                tar.add(path, arcname=member, recursive=False)
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)


def _reading(path: Path) -> tarfile.TarFile:
    import tarfile

    return tarfile.open(path, "r:")


def _read_manifest(path: Path) -> dict[str, Any]:
    import tarfile

    try:
        with tarfile.open(path, "r:") as archive:
            manifest = json.loads(_read_text(archive, "manifest.json"))
    except (tarfile.TarError, OSError, ValueError, KeyError) as err:
        raise _damaged(path.name, f"no readable manifest: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _damaged(path.name, f"manifest format is not {FORMAT}")
    return manifest


def _read_text(archive: tarfile.TarFile, member: str) -> str:
    return b"".join(_member_blocks(archive, member)).decode()


def _member_blocks(archive: tarfile.TarFile, member: str) -> Iterator[bytes]:
    try:
        extracted = archive.extractfile(member)
    except KeyError as err:
        raise _damaged(member, "is missing from the archive") from err
    if extracted is None:
        raise _damaged(member, "is not a file")
    with extracted:
        yield from iter(lambda: extracted.read(1 << 20), b"")


def _damaged(what: str, problem: str) -> errors.InvalidArgument:
    return errors.InvalidArgument.of([errors.FieldViolation("backup", f"{what}: {problem}")])
