"""One log stream of one container, followed across rotations without losing or repeating a line (see :mod:`.logs`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from scheduler.domain import LogStream
from scheduler.runtime.logger import parse_record, rotated_name

READ_BUDGET = 1024 * 1024
"""Bytes one stream reads per call, so that one busy container does not starve the others."""
MAX_JOINED = 1024 * 1024
"""Longest line rebuilt from pieces; a longer one is sent in parts of this size."""
_READ_CHUNK = 64 * 1024
_MAX_HOPS = 64


def ns_to_datetime(ns: int) -> datetime:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def datetime_to_ns(at: datetime) -> int:
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
