"""Reading container logs: what each task's log writer recorded, with the time of every line.

Layout: ``<logs_dir>/<env>/<container id>/{stdout,stderr}.log``, and the rotated ``.log.1``
(the previous file), ``.log.2`` (older still) and so on, in the record format of
:mod:`scheduler.runtime.logger`: ``<RFC 3339 ns time> <stream> <F|P> <text>``. Pieces of long
lines (``P``) are joined again here. Lines in no known format (files written before the log
writer existed) get the file's modification time.

A :class:`StreamReader` follows one stream across rotations without losing or repeating a line:
it keeps its current file open and identifies files by inode, so a rotation only moves it on
once the file it holds is complete, to the next one in the chain. Following rescans the
environment's containers on every poll, so it moves on to a replacement container by itself.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from scheduler.domain import ContainerStatus, Environment, LogLine, LogQuery, LogStream
from scheduler.orchestrator.log_stream import (
    StreamReader,
    datetime_to_ns,
    ns_to_datetime,
)

# StreamReader is part of this module's interface as before.
__all__ = ["StreamReader", "log_file", "read_logs", "remove_logs"]

POLL_SECONDS = 0.2
GONE_POLLS = 25
"""Polls a departed container is still read for (its last output may land late), then dropped."""


def log_file(logs_dir: Path, env: str, container_id: str, stream: LogStream) -> Path:
    """Where the log writer writes one stream of one container (the current file)."""
    return logs_dir / env / container_id / f"{stream.value}.log"


async def _merged(
    readers: dict[tuple[str, LogStream], StreamReader], since_ns: int | None
) -> AsyncIterator[tuple[tuple[str, LogStream], int, str]]:
    """Every reader's lines up to where its files end now, merged by time, reading a batch at a time.

    Memory stays at about one batch per reader however long the history is. Equal times keep
    the readers' order, and one reader's lines keep theirs.
    """
    buffers: dict[tuple[str, LogStream], deque[tuple[int, str]]] = {key: deque() for key in readers}
    live = set(readers)
    while True:
        for key in list(live):
            while not buffers[key] and key in live:
                batch = await asyncio.to_thread(readers[key].read)
                if not batch:
                    live.discard(key)  # caught up: the follow takes it from here
                buffers[key].extend(item for item in batch if since_ns is None or item[0] >= since_ns)
        ready = [key for key in readers if buffers[key]]
        if not ready:
            return
        key = min(ready, key=lambda k: buffers[k][0][0])
        at, text = buffers[key].popleft()
        yield key, at, text


class EnvironmentSource(Protocol):
    """Where the log reader learns an environment's current containers (the ledger, in the daemon)."""

    async def get(self, name: str) -> Environment:
        """The current state of environment ``name``."""
        ...


async def read_logs(
    store: EnvironmentSource, logs_dir: Path, env: str, query: LogQuery, closing: asyncio.Event
) -> AsyncIterator[LogLine]:
    """Yield the requested lines of every container of ``env`` in time order, then follow them if asked."""
    streams = [query.stream] if query.stream else [LogStream.STDOUT, LogStream.STDERR]
    since_ns = None if query.since is None else datetime_to_ns(query.since)
    readers: dict[tuple[str, LogStream], StreamReader] = {}
    owners: dict[str, ContainerStatus] = {}
    gone: dict[str, int] = {}

    def wanted(status: ContainerStatus) -> bool:
        return not query.services or status.service in query.services

    def line(key: tuple[str, LogStream], at: int, text: str) -> LogLine:
        owner = owners[key[0]]
        return LogLine(owner.service, owner.replica, key[0], key[1], ns_to_datetime(at), text)

    try:
        environment = await store.get(env)
        for status in environment.containers:
            if not wanted(status):
                continue
            owners[status.container_id] = status
            for stream in streams:
                reader = StreamReader(logs_dir / env / status.container_id, stream)
                await asyncio.to_thread(reader.seek, query.tail, since_ns)
                readers[(status.container_id, stream)] = reader
        async for key, at, text in _merged(readers, since_ns):
            yield line(key, at, text)
        if not query.follow:
            return
        while not closing.is_set():
            try:
                environment = await store.get(env)
            except Exception:  # noqa: BLE001 - the environment went away: the follow ends
                return
            present = {status.container_id for status in environment.containers}
            for status in environment.containers:
                if not wanted(status) or status.container_id in owners:
                    continue
                # A new container (a restart or a replacement): follow it from its beginning.
                owners[status.container_id] = status
                for stream in streams:
                    readers[(status.container_id, stream)] = StreamReader(logs_dir / env / status.container_id, stream)
            for cid in set(owners) - present:
                # A departed container's last output may still land: read it a while longer.
                gone[cid] = gone.get(cid, 0) + 1
                if gone[cid] > GONE_POLLS:
                    for stream in streams:
                        if (cid, stream) in readers:
                            readers.pop((cid, stream)).close()
            busy = False
            batch: list[LogLine] = []
            for key, reader in list(readers.items()):
                lines = await asyncio.to_thread(reader.read)
                busy = busy or bool(lines)
                batch.extend(line(key, at, text) for at, text in lines)
            batch.sort(key=lambda item: item.at)  # stable: one stream's lines keep their order
            for item in batch:
                yield item
            if busy:
                continue  # more may be waiting: read again before sleeping
            try:
                await asyncio.wait_for(closing.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
    finally:
        for reader in readers.values():
            reader.close()


def remove_logs(logs_dir: Path, env: str) -> None:
    """Delete an environment's log files (after its containers are gone)."""
    shutil.rmtree(logs_dir / env, ignore_errors=True)
