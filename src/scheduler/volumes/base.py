"""What the orchestrator needs of named volumes; the daemon chooses the implementation.

Methods are synchronous filesystem work (the orchestrator runs them with ``asyncio.to_thread``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scheduler.volumes.sync import SyncStats


@dataclass(frozen=True)
class Volume:
    """A volume directory found on the host."""

    env: str
    name: str
    path: Path


class VolumeStore(Protocol):
    """Creates, lists, backs up, restores and removes the named volumes of environments."""

    def path(self, env: str, name: str) -> Path:
        """Where volume ``name`` of ``env`` lives, whether or not it exists (names are checked)."""
        ...

    def ensure(self, env: str, name: str) -> Path:
        """Create the volume if missing and return its directory; existing data is kept."""
        ...

    def seed(self, env: str, name: str, source: Path, subpath: str = "", *, move: bool = False) -> bool:
        """Create the volume as a copy of ``source`` (placed at ``subpath`` inside it) unless it has data.

        Returns whether it seeded; a volume that exists and is not empty is left alone. The copy
        appears whole or not at all. With ``move`` the directory ``source`` itself becomes the
        data (renamed, no copy) and is gone afterwards.
        """
        ...

    def layer(self, env: str, name: str, lower: Path) -> bool:
        """Create the volume as a writable overlay on the read-only ``lower`` unless it has data.

        Returns whether it layered. Raises OSError when the host cannot (then copy instead).
        """
        ...

    def remount_layers(self) -> tuple[list[str], list[str]]:
        """Mount again the layered volumes whose mounts are gone (after a reboot): names mounted, failures."""
        ...

    def lowers(self) -> set[Path]:
        """The directories layered volumes are made on: they must not be removed."""
        ...

    def remove(self, env: str, name: str) -> None:
        """Delete a volume and its data; removing a missing volume is not an error."""
        ...

    def remove_environment(self, env: str) -> None:
        """Delete every volume of ``env``; idempotent."""
        ...

    def list(self, env: str | None = None) -> list[Volume]:
        """Volumes of one environment or all, sorted by environment then name."""
        ...

    def exists(self, env: str, name: str) -> bool:
        """Whether the volume exists."""
        ...

    def size(self, env: str, name: str) -> int:
        """Bytes used by the files of a volume."""
        ...

    def backup(self, env: str, name: str, tar_path: Path) -> Path:
        """Write the volume's contents to a gzip tar archive, keeping owners and modes."""
        ...

    def restore(self, env: str, name: str, tar_path: Path) -> Path:
        """Replace the volume's contents with those of an archive made by :meth:`backup`."""
        ...

    def staging(self) -> Path:
        """A new empty private directory beside the volumes, for copies being made."""
        ...

    def copy_into(self, env: str, name: str, target: Path, since: float | None = None) -> SyncStats:
        """Copy (or, with ``since``, bring up to date) volume ``name`` of ``env`` into ``target``."""
        ...

    def adopt(self, env: str, name: str, staged: Path) -> Path:
        """Move a directory made under :meth:`staging` into place as a new volume of ``env``."""
        ...

    def discard(self, staged: Path) -> None:
        """Remove a directory made by :meth:`staging`; idempotent."""
        ...
