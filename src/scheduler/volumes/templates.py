"""Data-directory templates on the host: ``<root>/<key>/data`` plus a ``template.json`` record.

A template is a directory whose name is its key and that holds a ``template.json``: anything
else under the root (``.build-*`` directories a crash left behind) is never used and is swept.
A template appears by one rename of a finished build directory, so it is whole or absent. The
record names the image (reference and digest) and the parameters it was built with; which
environments were seeded from it is kept as empty files under ``users/``, and its last use as
the record's ``last_used_at``. ``spares/`` holds whole copies of ``data`` made ahead of time
(each appears by a rename once complete), so that a new volume costs a rename instead of a copy;
a spare is claimed by renaming it to a ``.claimed-`` name, so two claims never get the same one.
The root is ``0700`` and owned by root, like the volumes root: the files inside keep the owner
the image gave them (PostgreSQL's uid).

Methods are synchronous filesystem work (callers run them with ``asyncio.to_thread``).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from scheduler.domain import DataTemplate
from scheduler.validation import env_name_problem
from scheduler.volumes.copy import copy_tree, sync_filesystem

_KEY = re.compile(r"^[0-9a-f]{16,64}$")
_BUILD_PREFIX = ".build-"
_PARTIAL = ".partial-"
_CLAIMED = ".claimed-"
RECORD = "template.json"
DATA = "data"


@dataclass(frozen=True)
class Build:
    """A build directory: the data directory goes in ``data``, the build's own files in ``work``."""

    path: Path

    @property
    def data(self) -> Path:
        """Where the build writes the template's data directory."""
        return self.path / DATA

    @property
    def work(self) -> Path:
        """Scratch space of the build (its logs); not part of the template."""
        return self.path / "work"


class TemplateStore:
    """Templates under one root directory; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def data(self, key: str) -> Path | None:
        """The data directory of template ``key``, or None when there is no such template."""
        path = self._dir(key)
        if (path / RECORD).is_file() and (path / DATA).is_dir():
            return path / DATA
        return None

    def get(self, key: str) -> DataTemplate | None:
        """The record of template ``key`` with its users, or None."""
        path = self._dir(key)
        try:
            raw = json.loads((path / RECORD).read_text())
        except (OSError, ValueError):
            return None
        users = tuple(sorted(p.name for p in (path / "users").iterdir())) if (path / "users").is_dir() else ()
        return DataTemplate(
            key=key,
            kind=str(raw.get("kind", "")),
            image=str(raw.get("image", "")),
            image_digest=str(raw.get("image_digest", "")),
            parameters={str(k): str(v) for k, v in dict(raw.get("parameters", {})).items()},
            created_at=datetime.fromisoformat(raw["created_at"]),
            last_used_at=datetime.fromisoformat(raw.get("last_used_at") or raw["created_at"]),
            size_bytes=int(raw.get("size_bytes", 0)),
            environments=users,
        )

    def list(self) -> list[DataTemplate]:
        """Every template, oldest first."""
        if not self.root.is_dir():
            return []
        found = [self.get(p.name) for p in self.root.iterdir() if _KEY.match(p.name)]
        return sorted((t for t in found if t is not None), key=lambda t: (t.created_at, t.key))

    def begin(self) -> Build:
        """A fresh build directory, under a name that is never taken for a template."""
        self._private(self.root)
        path = self.root / f"{_BUILD_PREFIX}{uuid.uuid4().hex}"
        path.mkdir(mode=0o700)
        (path / DATA).mkdir(mode=0o700)
        (path / "work").mkdir(mode=0o700)
        return Build(path)

    def commit(self, build: Build, template: DataTemplate) -> DataTemplate:
        """Make a finished build template ``template.key``: flushed to disk, then renamed into place.

        Only after every file is on disk does the template appear, so a crash can never leave
        one that is later copied half-written.
        """
        size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(build.data) for f in files)
        template = replace(template, size_bytes=size)
        shutil.rmtree(build.work, ignore_errors=True)
        _write_record(build.path, template)
        sync_filesystem(build.path)
        target = self._dir(template.key)
        os.rename(build.path, target)
        _fsync_dir(self.root)
        return template

    def add_spare(self, key: str) -> bool:
        """Copy template ``key``'s data into a new spare; False when the template is gone."""
        data = self.data(key)
        if data is None:
            return False
        spares = self._dir(key) / "spares"
        spares.mkdir(mode=0o700, exist_ok=True)
        partial = spares / f"{_PARTIAL}{uuid.uuid4().hex}"
        try:
            copy_tree(data, partial)
            sync_filesystem(partial)  # on disk before it can become a volume (see sync_filesystem)
            os.rename(partial, spares / uuid.uuid4().hex)
            _fsync_dir(spares)
        except FileNotFoundError:
            return False  # removed meanwhile
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return True

    def spares(self, key: str) -> int:
        """How many whole spares template ``key`` has."""
        spares = self._dir(key) / "spares"
        return sum(1 for p in spares.iterdir() if not p.name.startswith(".")) if spares.is_dir() else 0

    def claim_spare(self, key: str) -> Path | None:
        """Take one spare of template ``key`` for the caller alone (to move into a volume), or None."""
        spares = self._dir(key) / "spares"
        if not spares.is_dir():
            return None
        for spare in spares.iterdir():
            if spare.name.startswith("."):
                continue
            claimed = spares / f"{_CLAIMED}{spare.name}"
            try:
                os.rename(spare, claimed)
            except FileNotFoundError:
                continue  # another claim won this one
            return claimed
        return None

    def abandon(self, build: Build) -> None:
        """Remove a build that failed."""
        shutil.rmtree(build.path, ignore_errors=True)

    def use(self, key: str, env: str, at: datetime) -> None:
        """Record that environment ``env`` was seeded from template ``key`` at ``at``."""
        template = self.get(key)
        if template is None or env_name_problem(env):
            return
        users = self._dir(key) / "users"
        users.mkdir(mode=0o700, exist_ok=True)
        (users / env).touch()
        _write_record(self._dir(key), replace(template, last_used_at=at))

    def forget(self, key: str, env: str) -> None:
        """Record that environment ``env`` no longer exists."""
        if env_name_problem(env) is None:
            with contextlib.suppress(FileNotFoundError):
                (self._dir(key) / "users" / env).unlink()

    def remove(self, key: str) -> None:
        """Delete template ``key``; the volumes copied from it are independent and stay."""
        path = self._dir(key)
        # Renamed away first, so that nothing sees a template whose files are going.
        doomed = self.root / f"{_BUILD_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def sweep(self) -> builtins.list[str]:
        """Remove build directories a crash or a failed build left; returns their names.

        Call only when no build runs (at start).
        """
        if not self.root.is_dir():
            return []
        swept = [p for p in self.root.iterdir() if p.name.startswith(_BUILD_PREFIX)]
        for template in self.root.iterdir():
            if _KEY.match(template.name) and (template / "spares").is_dir():
                swept += [p for p in (template / "spares").iterdir() if p.name.startswith(".")]
        for path in swept:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in swept]

    def _dir(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"template key {key!r} is not a hex digest")
        return self.root / key

    @staticmethod
    def _private(path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700, follow_symlinks=False)
        if os.geteuid() == 0:
            os.chown(path, 0, 0, follow_symlinks=False)


def _write_record(directory: Path, template: DataTemplate) -> None:
    record = {
        "key": template.key,
        "kind": template.kind,
        "image": template.image,
        "image_digest": template.image_digest,
        "parameters": dict(template.parameters),
        "created_at": template.created_at.isoformat(),
        "last_used_at": template.last_used_at.isoformat(),
        "size_bytes": template.size_bytes,
    }
    partial = directory / f".{RECORD}.{uuid.uuid4().hex[:8]}"
    partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(partial, directory / RECORD)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
