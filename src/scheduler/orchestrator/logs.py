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
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from scheduler.domain import ContainerStatus, Environment, LogLine, LogQuery, LogStream
from scheduler.runtime.logger import parse_record, rotated_name

POLL_SECONDS = 0.2
READ_BUDGET = 1024 * 1024
"""Bytes one stream reads per call, so that one busy container does not starve the others."""
MAX_JOINED = 1024 * 1024
"""Longest line rebuilt from pieces; a longer one is sent in parts of this size."""
GONE_POLLS = 25
"""Polls a departed container is still read for (its last output may land late), then dropped."""
_READ_CHUNK = 64 * 1024
_MAX_HOPS = 64


def log_file(logs_dir: Path, env: str, container_id: str, stream: LogStream) -> Path:
    """Where the log writer writes one stream of one container (the current file)."""
    return logs_dir / env / container_id / f"{stream.value}.log"


def _to_datetime(ns: int) -> datetime:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def _to_ns(at: datetime) -> int:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _lines_backward(handle: BinaryIO, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the complete lines in the first ``size`` bytes, last line first."""
    pos = size
    buf = b""
    trimmed = False
    while pos > 0:
        step = min(_READ_CHUNK, pos)
        pos -= step
        handle.seek(pos)
        buf = handle.read(step) + buf
        if not trimmed:
            cut = buf.rfind(b"\n")
            if cut < 0:
                continue  # still inside an unfinished last line
            buf = buf[: cut + 1]
            trimmed = True
        lines = buf[:-1].split(b"\n")
        offset = pos + len(buf)
        # Unless the file's start is reached, the first line may continue in the previous chunk.
        complete = lines if pos == 0 else lines[1:]
        for line in reversed(complete):
            offset -= len(line) + 1
            yield offset, line
        buf = b"" if pos == 0 else lines[0] + b"\n"


class StreamReader:
    """Reads one stream of one container in order, across rotated files, each line once."""

    def __init__(self, directory: Path, stream: LogStream) -> None:
        self.directory = directory
        self.stream = stream
        self.name = f"{stream.value}.log"
        self._file: BinaryIO | None = None
        self._inode = 0
        self._carry = b""
        self._joined = b""
        self._joined_at: int | None = None

    def _path(self, index: int) -> Path:
        return self.directory / rotated_name(self.name, index)

    def _inode_at(self, index: int) -> int | None:
        try:
            return self._path(index).stat().st_ino
        except FileNotFoundError:
            return None

    def chain(self) -> list[tuple[int, int]]:
        """(rotation index, inode) of the stream's files, oldest first; a listing, not a snapshot."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        indexes = []
        for name in names:
            if name == self.name:
                indexes.append(0)
            elif name.startswith(self.name + ".") and name[len(self.name) + 1 :].isdigit():
                indexes.append(int(name[len(self.name) + 1 :]))
        files = []
        for index in sorted(indexes, reverse=True):
            inode = self._inode_at(index)
            if inode is not None:
                files.append((index, inode))
        return files

    def close(self) -> None:
        """Release the open file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _hold(self, handle: BinaryIO, offset: int) -> None:
        self.close()
        handle.seek(offset)
        self._file = handle
        self._inode = os.fstat(handle.fileno()).st_ino

    def _snapshot(self) -> list[BinaryIO]:
        """Every file of the stream open, newest first, as they were at one instant.

        A rotation renames every file, so after opening ``.log.N`` the file just opened before
        it must still be ``.log.N-1``; otherwise a rotation came in between and it starts over.
        """
        for _ in range(10):
            handles: list[BinaryIO] = []
            consistent = True
            for index in range(100_000):
                try:
                    handle: BinaryIO | None = self._path(index).open("rb")
                except FileNotFoundError:
                    handle = None
                if index and self._inode_at(index - 1) != os.fstat(handles[-1].fileno()).st_ino:
                    consistent = False
                if handle is None:
                    # A gap with older files behind it is a rotation in progress.
                    consistent = consistent and self._inode_at(index + 1) is None
                    break
                handles.append(handle)
                if not consistent:
                    break
            if consistent:
                return handles
            for handle in handles:
                handle.close()
        return []

    def _successor(self) -> BinaryIO | None:
        """The file written after the one held (which was rotated); None to look again later."""
        assert self._file is not None
        files = self.chain()
        mine = [index for index, inode in files if inode == self._inode]
        if not mine:
            if os.fstat(self._file.fileno()).st_nlink:
                return None  # renamed while listing
            # Rotated out before it was read to the end: resume with the oldest file kept.
            oldest = self._snapshot()
            for handle in oldest[:-1]:
                handle.close()
            return oldest[-1] if oldest else None
        if not mine[0]:
            return None
        try:
            handle = self._path(mine[0] - 1).open("rb")
        except FileNotFoundError:
            return None  # a rotation is in progress
        # Ours still at its place once the other is open: no rotation came in between.
        if self._inode_at(mine[0]) != self._inode:
            handle.close()
            return None
        return handle

    def seek(self, tail: int = 0, since_ns: int | None = None) -> None:
        """Position before the last ``tail`` lines (0: all) that are not older than ``since_ns``.

        Without either limit the reader starts at the oldest file, lazily (it may not exist yet).
        """
        if not tail and since_ns is None:
            return
        handles = [(handle, os.fstat(handle.fileno()).st_size) for handle in self._snapshot()]
        try:
            start = self._scan_back(handles, tail, since_ns)
            if start is not None:
                index, offset = start
                self._hold(handles.pop(index)[0], offset)
        finally:
            for handle, _ in handles:
                handle.close()

    def _scan_back(
        self, handles: list[tuple[BinaryIO, int]], tail: int, since_ns: int | None
    ) -> tuple[int, int] | None:
        """Where to start in ``handles`` (newest first): (index, offset), or None for the oldest file."""
        counted = 0
        for index, (handle, size) in enumerate(handles):
            stat = os.fstat(handle.fileno())
            if since_ns is not None and stat.st_mtime_ns < since_ns:
                # Nothing was written to this file since: start with the next newer one.
                if index:
                    return index - 1, 0
                last = next(_lines_backward(handle, size), None)
                return index, 0 if last is None else last[0] + len(last[1]) + 1
            for offset, line in _lines_backward(handle, size):
                record = parse_record(line)
                complete = record is None or record[1]
                if not complete:
                    continue
                at = stat.st_mtime_ns if record is None else record[0]
                if (tail and counted == tail) or (since_ns is not None and at < since_ns):
                    return index, offset + len(line) + 1
                counted += 1
        return None

    def read(self, budget: int = READ_BUDGET) -> list[tuple[int, str]]:
        """The lines written since the last call, as (ns since the epoch, text); [] when caught up."""
        out: list[tuple[int, str]] = []
        for _ in range(_MAX_HOPS):
            if self._file is None:
                handles = self._snapshot()
                if not handles:
                    return out
                for newer in handles[:-1]:
                    newer.close()
                self._hold(handles[-1], 0)
            assert self._file is not None
            data = self._file.read(budget)
            if data:
                self._consume(data, out)
                budget -= len(data)
                if budget <= 0:
                    return out
                continue
            files = self.chain()
            if not files or files[-1][1] == self._inode:
                return out  # caught up with the file being written
            # Ours was rotated: every write to it came before that, so finish it, then move on.
            self._consume(self._file.read(), out)
            if self._carry:  # only files of another format end without a newline
                self._consume(b"\n", out)
            successor = self._successor()
            if successor is not None:
                self._hold(successor, 0)
        return out

    def _consume(self, data: bytes, out: list[tuple[int, str]]) -> None:
        data = self._carry + data
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        if not end:
            return
        fallback: int | None = None
        for line in data[: end - 1].split(b"\n"):
            record = parse_record(line)
            if record is None:
                if fallback is None:
                    assert self._file is not None
                    fallback = os.fstat(self._file.fileno()).st_mtime_ns
                at, complete, text = fallback, True, line
            else:
                at, complete, text = record
            if self._joined_at is None:
                self._joined_at = at
            if not complete and len(self._joined) + len(text) < MAX_JOINED:
                self._joined += text
                continue
            out.append((self._joined_at, (self._joined + text).decode(errors="replace")))
            self._joined, self._joined_at = b"", None

    def read_all(self) -> list[tuple[int, str]]:
        """Everything up to the end of the newest file (bounded: at most 10 000 reads)."""
        lines: list[tuple[int, str]] = []
        for _ in range(10_000):
            batch = self.read()
            if not batch:
                break
            lines.extend(batch)
        return lines


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
    since_ns = None if query.since is None else _to_ns(query.since)
    readers: dict[tuple[str, LogStream], StreamReader] = {}
    owners: dict[str, ContainerStatus] = {}
    gone: dict[str, int] = {}

    def wanted(status: ContainerStatus) -> bool:
        return not query.services or status.service in query.services

    def line(key: tuple[str, LogStream], at: int, text: str) -> LogLine:
        owner = owners[key[0]]
        return LogLine(owner.service, owner.replica, key[0], key[1], _to_datetime(at), text)

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
