"""Reading container logs: the shim writes each container's stdout and stderr to their own files.

Layout: ``<logs_dir>/<env>/<container id>/{stdout,stderr}.log``. Lines carry no timestamp of their
own, so old lines are stamped with their file's modification time and followed lines with the time
they were read. Following rescans the environment's containers on every poll, so it moves on to a
replacement container by itself.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from scheduler.domain import ContainerStatus, LogLine, LogQuery, LogStream
from scheduler.storage.base import StateStore

POLL_SECONDS = 0.2
_READ_CHUNK = 64 * 1024


def log_file(logs_dir: Path, env: str, container_id: str, stream: LogStream) -> Path:
    """Where the shim writes one stream of one container."""
    return logs_dir / env / container_id / f"{stream.value}.log"


class _Cursor:
    """Read position in one log file, with the partial line left over from the last read."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.partial = b""

    def read_new(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or rotated: start over
            self.offset = 0
            self.partial = b""
        if size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def _tail(path: Path, count: int) -> tuple[list[str], int]:
    """Return the last ``count`` complete lines (all when 0) and the offset just after them."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], 0
    with path.open("rb") as handle:
        if count == 0:
            data = handle.read(size)
        else:
            # Read backwards in chunks until enough newlines are seen.
            start, data = size, b""
            while start > 0 and data.count(b"\n") <= count:
                step = min(_READ_CHUNK, start)
                start -= step
                handle.seek(start)
                data = handle.read(step) + data
    end_of_complete = data.rfind(b"\n") + 1
    lines = data[:end_of_complete].split(b"\n")[:-1]
    if count:
        lines = lines[-count:]
    consumed = size - (len(data) - end_of_complete)
    return [line.decode(errors="replace") for line in lines], consumed


def _mtime(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return datetime.now(UTC)


async def read_logs(
    store: StateStore, logs_dir: Path, env: str, query: LogQuery, closing: asyncio.Event
) -> AsyncIterator[LogLine]:
    """Yield the requested lines of every container of ``env``, then follow them if asked."""
    streams = [query.stream] if query.stream else [LogStream.STDOUT, LogStream.STDERR]
    cursors: dict[tuple[str, LogStream], _Cursor] = {}
    owners: dict[str, ContainerStatus] = {}

    def wanted(status: ContainerStatus) -> bool:
        return not query.services or status.service in query.services

    environment = await store.get(env)
    for status in environment.containers:
        if not wanted(status):
            continue
        owners[status.container_id] = status
        for stream in streams:
            path = log_file(logs_dir, env, status.container_id, stream)
            lines, offset = await asyncio.to_thread(_tail, path, query.tail)
            at = _mtime(path)
            cursors[(status.container_id, stream)] = _Cursor(path, offset)
            if query.since is not None and at < query.since:
                continue
            for text in lines:
                yield LogLine(status.service, status.replica, status.container_id, stream, at, text)
    if not query.follow:
        return
    while not closing.is_set():
        try:
            environment = await store.get(env)
        except Exception:  # noqa: BLE001 - the environment went away: the follow ends
            return
        for status in environment.containers:
            if not wanted(status) or status.container_id in owners:
                continue
            # A new container (a restart or a replacement): follow it from its beginning.
            owners[status.container_id] = status
            for stream in streams:
                cursors[(status.container_id, stream)] = _Cursor(
                    log_file(logs_dir, env, status.container_id, stream), 0
                )
        for (cid, stream), cursor in list(cursors.items()):
            owner = owners[cid]
            for text in await asyncio.to_thread(cursor.read_new):
                yield LogLine(owner.service, owner.replica, cid, stream, datetime.now(UTC), text)
        try:
            await asyncio.wait_for(closing.wait(), POLL_SECONDS)
        except TimeoutError:
            pass


def remove_logs(logs_dir: Path, env: str) -> None:
    """Delete an environment's log files (after its containers are gone)."""
    shutil.rmtree(logs_dir / env, ignore_errors=True)
