"""Named volumes on the host: ``<root>/<env>/<name>`` directories bind-mounted into containers.

Methods are synchronous filesystem work (the orchestrator runs them with ``asyncio.to_thread``).
Every path is built from validated names and checked to stay under the root after resolving
symlinks, so a crafted name or a symlink planted inside a volume can never point outside.

Ownership: the root and each environment's directory are ``0700`` and owned by root, so no
host user can reach into a volume: a container's root can make a file setuid in its volume,
and a host user must never be able to run it (containers also mount volumes ``nosuid,nodev``,
see the runtime's spec). Volume directories themselves are ``0755``: images that run as
another user fix their own data directory (PostgreSQL's entrypoint chowns ``PGDATA`` to uid
999), so the scheduler does not need to know image users. Backups keep numeric owners and modes.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.errors import AlreadyExists, FailedPrecondition, FieldViolation, Internal, InvalidArgument, NotFound
from scheduler.validation import env_name_problem, volume_name_problem
from scheduler.volumes import overlay
from scheduler.volumes.base import Volume
from scheduler.volumes.copy import copy_tree, sync_filesystem
from scheduler.volumes.sync import SyncStats, sync_tree

if TYPE_CHECKING:
    import tarfile  # imported by the backups and restores that use it, not at every daemon start

DIR_MODE = 0o755
"""Mode of a volume directory, as the container sees its mount point."""
PRIVATE_MODE = 0o700
"""Mode of the root and of each environment's directory: the fence against host users."""
_SCRATCH_PREFIX = ".scratch-"
"""Restores unpack beside the volumes under this prefix; never a valid environment name."""


class HostVolumeStore:
    """The host's :class:`VolumeStore`: named volumes as directories under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- paths --------------------------------------------------------------------------------

    def path(self, env: str, name: str) -> Path:
        """Where volume ``name`` of environment ``env`` lives (whether or not it exists).

        Raises:
            InvalidArgument: naming ``env`` or ``volume`` when a name is not allowed.
            FailedPrecondition: the path would resolve outside the root (a planted symlink).
        """
        violations = []
        problem = env_name_problem(env)
        if problem:
            violations.append(FieldViolation("env", problem))
        problem = volume_name_problem(name)
        if problem:
            violations.append(FieldViolation("volume", problem))
        if violations:
            raise InvalidArgument.of(violations)
        root = self.root.resolve()
        path = root / env / name
        real = path.resolve()
        if real != path or not real.is_relative_to(root):
            raise FailedPrecondition(
                f"volume {env}/{name} resolves to {str(real)!r}, outside {str(root)!r} or through a symlink",
                env=env,
                volume=name,
            )
        return path

    def _env_dir(self, env: str) -> Path:
        problem = env_name_problem(env)
        if problem:
            raise InvalidArgument.of([FieldViolation("env", problem)])
        return self.root.resolve() / env

    # --- life cycle ---------------------------------------------------------------------------

    def ensure(self, env: str, name: str) -> Path:
        """Create the volume if missing and return its directory; existing data is kept."""
        path = self.path(env, name)
        try:
            self._private_dir(self.root, parents=True)
            self._private_dir(path.parent)
            path.mkdir(mode=DIR_MODE, exist_ok=True)
        except FileExistsError as err:
            raise FailedPrecondition(f"volume {env}/{name}: {str(path)!r} exists and is not a directory") from err
        except OSError as err:
            raise Internal(f"cannot create volume {env}/{name} at {str(path)!r}: {err}") from err
        # Re-check after creating: the parent could have been swapped for a symlink meanwhile.
        return self.path(env, name)

    def seed(self, env: str, name: str, source: Path, subpath: str = "", *, move: bool = False) -> bool:
        """Create the volume as a copy of ``source`` (at ``subpath`` inside it) unless it has data.

        The copy is made beside the volume under a name no volume can have and renamed into
        place, so a crash mid-copy leaves no half-filled volume that a later start would take
        for real data (the scratch copy goes with the environment's directory). An existing
        empty volume directory is replaced. With ``move``, ``source`` (a private copy made
        beforehand, off the critical path) is renamed into place instead: the seed then costs a
        rename whatever its size; across filesystems it is copied and removed. Returns whether
        it seeded.

        Raises:
            InvalidArgument: naming ``subpath`` when it is absolute or climbs out.
            NotFound: ``source`` is not a directory.
        """
        path = self.path(env, name)
        parts = [p for p in subpath.split("/") if p and p != "."]
        if subpath.startswith("/") or ".." in parts:
            raise InvalidArgument.of([FieldViolation("subpath", f"{subpath!r} must be relative and stay inside")])
        if (path.is_dir() and any(path.iterdir())) or overlay.is_layered(path):
            return False
        if not Path(source).is_dir():
            raise NotFound(f"seed {str(source)!r} of volume {env}/{name} is not a directory", path=str(source))
        self._private_dir(self.root, parents=True)
        self._private_dir(path.parent)
        scratch = path.parent / f"{_SCRATCH_PREFIX}{uuid.uuid4().hex}"
        try:
            if parts:
                inner = scratch.joinpath(*parts[:-1])
                inner.mkdir(mode=DIR_MODE, parents=True)
                for depth in range(len(parts)):
                    os.chmod(scratch.joinpath(*parts[:depth]), DIR_MODE)  # mkdir's mode is masked by the umask
                _take(Path(source), inner / parts[-1], move)
            else:
                # The source's directory becomes the volume itself, with its owner and mode
                # (PGDATA's 0700 and uid): the environment's 0700 directory still fences it.
                _take(Path(source), scratch, move)
            if path.is_dir():
                path.rmdir()  # empty (checked above); a file planted meanwhile makes this fail
            os.rename(scratch, path)
        except OSError as err:
            raise Internal(f"cannot seed volume {env}/{name} from {str(source)!r}: {err}") from err
        finally:
            _remove_tree(scratch)
        self.path(env, name)  # the parent could have been swapped for a symlink meanwhile
        return True

    def layer(self, env: str, name: str, lower: Path) -> bool:
        """Create the volume as an overlay on the read-only ``lower`` unless it has data (see ``overlay``).

        Returns whether it layered; a volume with data is left alone, and one whose overlay is
        recorded but not mounted (after a reboot) is mounted again, not layered anew.

        Raises:
            OSError: the host cannot mount an overlay here; nothing is left behind.
        """
        path = self.path(env, name)
        if overlay.is_layered(path):
            if not os.path.ismount(path):
                try:
                    overlay.mount(path)
                except OSError as err:
                    raise FailedPrecondition(f"layered volume {env}/{name} cannot be mounted: {err}") from err
            return False
        if path.is_dir() and any(path.iterdir()):
            return False
        self._private_dir(self.root, parents=True)
        self._private_dir(path.parent)
        overlay.create(path, Path(lower))
        self.path(env, name)  # the parent could have been swapped for a symlink meanwhile
        return True

    def remount_layers(self) -> tuple[list[str], list[str]]:
        """Mount again the layered volumes whose mounts are gone (after a reboot).

        Returns the names of those mounted, and of those that could not be, with why.
        """
        mounted, failed = overlay.remount(self.root)
        return [f"{p.parent.name}/{p.name}" for p in mounted], [f"{p.parent.name}/{p.name}: {w}" for p, w in failed]

    def lowers(self) -> set[Path]:
        """The template directories layered volumes are made on (they must stay)."""
        return overlay.lowers(self.root)

    @staticmethod
    def _private_dir(path: Path, parents: bool = False) -> None:
        # mkdir's mode is masked by the umask and ignored for an existing directory (one made
        # 0755 by an older version): set it explicitly, and never through a symlink.
        path.mkdir(mode=PRIVATE_MODE, parents=parents, exist_ok=True)
        if path.is_symlink():
            raise FailedPrecondition(f"{str(path)!r} is a symlink; refusing to follow it")
        os.chmod(path, PRIVATE_MODE, follow_symlinks=False)
        if os.geteuid() == 0:
            os.chown(path, 0, 0, follow_symlinks=False)

    def remove(self, env: str, name: str) -> None:
        """Delete a volume and its data; removing a missing volume is not an error.

        A symlink planted in place of the volume is unlinked, never followed.

        Raises:
            FailedPrecondition: the environment's directory is a symlink (nothing is removed).
        """
        env_dir = self._env_dir(env)
        if env_dir.is_symlink():
            raise FailedPrecondition(f"volume directory of {env!r} is a symlink; refusing to follow it", env=env)
        problem = volume_name_problem(name)
        if problem:
            raise InvalidArgument.of([FieldViolation("volume", problem)])
        try:
            overlay.drop(env_dir / name)
        except OSError as err:
            raise Internal(f"cannot unmount volume {env}/{name}: {err}") from err
        _remove_tree(env_dir / name)
        try:
            env_dir.rmdir()
        except OSError:
            pass  # other volumes remain, or it was never there

    def remove_environment(self, env: str) -> None:
        """Delete every volume of ``env``; idempotent. A symlink in its place is only unlinked."""
        env_dir = self._env_dir(env)
        try:
            overlay.unmount_all(env_dir)
        except OSError as err:
            raise Internal(f"cannot unmount a volume of {env}: {err}") from err
        _remove_tree(env_dir)

    def list(self, env: str | None = None) -> list[Volume]:
        """Volumes on the host, of one environment or all, sorted by environment then name."""
        if env is not None:
            env_dirs = [self._env_dir(env)]
        elif self.root.is_dir():
            env_dirs = sorted(p for p in self.root.resolve().iterdir() if env_name_problem(p.name) is None)
        else:
            env_dirs = []
        found = []
        for env_dir in env_dirs:
            if not env_dir.is_dir() or env_dir.is_symlink():
                continue
            for entry in sorted(env_dir.iterdir()):
                if entry.is_dir() and not entry.is_symlink() and volume_name_problem(entry.name) is None:
                    found.append(Volume(env_dir.name, entry.name, entry))
        return found

    def exists(self, env: str, name: str) -> bool:
        """Whether the volume directory exists."""
        return self.path(env, name).is_dir()

    def size(self, env: str, name: str) -> int:
        """Bytes used by the files of a volume (apparent sizes, symlinks not followed).

        Raises:
            NotFound: naming the volume.
        """
        path = self._existing(env, name)
        total = 0
        for dirpath, _dirs, files in os.walk(path):
            for file in files:
                try:
                    total += os.lstat(os.path.join(dirpath, file)).st_size
                except FileNotFoundError:
                    continue  # removed while walking
        return total

    # --- backup and restore ---------------------------------------------------------------------

    def backup(self, env: str, name: str, tar_path: Path) -> Path:
        """Write the volume's contents to a gzip tar archive, keeping owners and modes.

        The volume should not be written meanwhile (stop its service first) for a consistent copy.

        Raises:
            NotFound: naming the volume.
        """
        source = self._existing(env, name)
        tar_path = Path(tar_path)
        partial = tar_path.with_name(f".{tar_path.name}.{uuid.uuid4().hex[:8]}.partial")
        import tarfile

        try:
            with tarfile.open(partial, "w:gz") as archive:
                archive.add(source, arcname=".", recursive=True)
            os.replace(partial, tar_path)
        except OSError as err:
            raise Internal(f"cannot back up volume {env}/{name} to {str(tar_path)!r}: {err}") from err
        finally:
            partial.unlink(missing_ok=True)
        return tar_path

    def restore(self, env: str, name: str, tar_path: Path) -> Path:
        """Replace the volume's contents with those of an archive made by :meth:`backup`.

        The archive is unpacked beside the volume first and swapped in at the end, so a bad
        archive leaves the current data untouched. Members that would land outside the volume
        (absolute paths, ``..``, links pointing out) are refused.

        Raises:
            NotFound: the archive does not exist.
            InvalidArgument: naming ``tar_path`` when the archive is unreadable or unsafe.
        """
        target = self.path(env, name)
        tar_path = Path(tar_path)
        if not tar_path.is_file():
            raise NotFound(f"backup archive {str(tar_path)!r} not found", path=str(tar_path))
        self._private_dir(self.root, parents=True)
        scratch = self.root.resolve() / f"{_SCRATCH_PREFIX}{uuid.uuid4().hex}"
        scratch.mkdir(mode=DIR_MODE)
        try:
            staged = scratch / "data"
            staged.mkdir(mode=DIR_MODE)
            import tarfile

            try:
                with tarfile.open(tar_path, "r:*") as archive:
                    archive.extractall(staged, numeric_owner=True, filter=_keep_owner_filter)
            except (tarfile.TarError, OSError, EOFError) as err:
                raise InvalidArgument.of(
                    [FieldViolation("tar_path", f"cannot restore from {str(tar_path)!r}: {err}")]
                ) from err
            sync_filesystem(staged)  # on disk before the old data goes (see sync_filesystem)
            self.ensure(env, name)
            if overlay.is_layered(target):  # the restored data is a plain directory
                overlay.unmount(target)
                os.rename(overlay.layers(target), scratch / "old-layers")
            old = scratch / "old"
            os.rename(target, old)
            os.rename(staged, target)
        finally:
            _remove_tree(scratch)
        return target

    # --- copies -------------------------------------------------------------------------------

    def staging(self) -> Path:
        """A new empty private directory under the root (a name no environment can have)."""
        self._private_dir(self.root, parents=True)
        scratch = self.root.resolve() / f"{_SCRATCH_PREFIX}{uuid.uuid4().hex}"
        scratch.mkdir(mode=PRIVATE_MODE)
        return scratch

    def copy_into(self, env: str, name: str, target: Path, since: float | None = None) -> SyncStats:
        """Copy volume ``name`` of ``env`` into ``target`` (see :func:`~scheduler.volumes.sync.sync_tree`).

        Raises:
            NotFound: naming the volume.
        """
        return sync_tree(self._existing(env, name), self._staged(Path(target)), since)

    def adopt(self, env: str, name: str, staged: Path) -> Path:
        """Move ``staged`` (under a staging directory) into place as volume ``name`` of ``env``.

        Raises:
            AlreadyExists: the volume exists already (nothing is moved).
        """
        source = self._staged(Path(staged))
        target = self.path(env, name)
        self._private_dir(target.parent)
        if target.exists() or target.is_symlink():
            raise AlreadyExists(f"volume {env}/{name} exists already", env=env, volume=name)
        sync_filesystem(source)  # the copy's files on disk before a database runs on them
        os.rename(source, target)
        return self.path(env, name)

    def discard(self, staged: Path) -> None:
        """Remove a staging directory and what it holds; idempotent."""
        _remove_tree(self._staged(Path(staged)))

    def _staged(self, path: Path) -> Path:
        root = self.root.resolve()
        real = path.resolve()
        if not real.is_relative_to(root) or not real.relative_to(root).parts[0].startswith(_SCRATCH_PREFIX):
            raise InvalidArgument.of([FieldViolation("staged", f"{str(path)!r} is not a staging directory")])
        return real

    def _existing(self, env: str, name: str) -> Path:
        path = self.path(env, name)
        if not path.is_dir():
            raise NotFound(f"volume {env}/{name} not found", env=env, volume=name)
        return path


def _take(source: Path, target: Path, move: bool) -> None:
    if move:
        try:
            os.rename(source, target)
            return
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
    copy_tree(source, target)
    sync_filesystem(target)  # a database's files must be on disk before it runs on them
    if move:
        _remove_tree(source)


def _keep_owner_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # The "data" filter refuses escapes and special files but drops owners; a database volume
    # needs its owner (uid 999) back, so restore the numeric ids it stripped.
    # It also leaves directory modes to the umask; PGDATA must come back 0700, so keep those too.
    import tarfile

    safe = tarfile.data_filter(member, dest)
    mode = member.mode & 0o1777 if member.isdir() else safe.mode
    return safe.replace(uid=member.uid, gid=member.gid, uname="", gname="", mode=mode, deep=False)


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise Internal(f"cannot remove {str(path)!r}: {err}") from err
