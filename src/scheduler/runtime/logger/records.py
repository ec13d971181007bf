"""The log format (CRI records in rotated files) and the writer of one stream.

File format (one file per stream, ``stdout.log`` and ``stderr.log``), the CRI log format::

    2026-11-27T16:00:00.123456789Z stdout F text of the line

RFC 3339 UTC time with nanoseconds, stream, tag, then the bytes of the line without its
newline. Tag ``F`` ends a line (also the last one, when output ended without a newline); ``P``
is a piece of a line longer than ``MAX_RECORD`` bytes, and a reader joins ``P`` pieces with the
next ``F``. Rotation renames ``stdout.log`` to ``stdout.log.1`` (``.1`` to ``.2``, ...) once
the next record would take it over ``max-bytes``, keeping ``max-files`` files in all.

Standard library only, and only modules that are cheap to load: the writer runs as
``python -I -S`` and the shim waits for it in Tasks.Create.
"""

from __future__ import annotations

import os
import time

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_FILES = 3
MAX_RECORD = 16 * 1024
"""Longest line piece in one record; longer lines are split into ``P`` records (as Docker does)."""
STREAMS = ("stdout", "stderr")


# --- format --------------------------------------------------------------------------------


class Clock:
    """Formats nanosecond wall-clock times as RFC 3339, caching the part that changes each second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def stamp(self, ns: int) -> bytes:
        """``2026-11-27T16:00:00.123456789Z`` for ``ns`` nanoseconds since the epoch."""
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%s.%09dZ" % (self._prefix, fraction)


def parse_record(line: bytes) -> tuple[int, bool, bytes] | None:
    """Split one record (without its newline) into (nanoseconds since the epoch, complete, text).

    ``complete`` is False for a ``P`` piece. None when the line is not a record (for example a
    file written before this format).
    """
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[2] not in (b"F", b"P"):
        return None
    stamp = parts[0]
    if len(stamp) < 20 or stamp[-1:] != b"Z" or stamp[4:5] != b"-" or stamp[10:11] != b"T":
        return None
    try:
        year, month, day = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
        hour, minute, second = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
        fraction = stamp[20:-1] if stamp[19:20] == b"." else b""
        nanos = int((fraction + b"000000000")[:9]) if fraction else 0
    except ValueError:
        return None
    days = _days_from_civil(year, month, day)
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second
    return seconds * 1_000_000_000 + nanos, parts[2] == b"F", parts[3] if len(parts) == 4 else b""


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), to stay off
    # the datetime/calendar imports in the writer.
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def rotated_name(name: str, index: int) -> str:
    """``stdout.log`` for index 0, ``stdout.log.<index>`` for older files."""
    return name if index == 0 else f"{name}.{index}"


# --- writer --------------------------------------------------------------------------------


class StreamWriter:
    """Turns the bytes of one stream into timestamped records in a rotated file."""

    def __init__(self, directory: str, stream: str, max_bytes: int, max_files: int, clock: Clock) -> None:
        self.directory = directory
        self.stream = stream
        self.name = f"{stream}.log"
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._clock = clock
        self._tag_full = b" %s F " % stream.encode()
        self._tag_part = b" %s P " % stream.encode()
        self._pending = b""
        self._fd = -1
        self._size = 0
        self.dropped = 0
        """Bytes that could not be written (disk full, ...): counted, never retried."""
        self._open()

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, rotated_name(self.name, index))

    def _open(self) -> None:
        self._fd = os.open(self._path(0), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def feed(self, data: bytes, now_ns: int | None = None) -> None:
        """Add bytes read from the stream; every complete line is written at once."""
        data = self._pending + data
        end = data.rfind(b"\n") + 1
        lines = data[: end - 1].split(b"\n") if end else []
        rest = data[end:]
        stamp = self._clock.stamp(time.time_ns() if now_ns is None else now_ns)
        records = []
        for line in lines:
            records.extend(self._records(stamp, line))
        # An unterminated line only goes out in pieces once it is longer than a record.
        while len(rest) > MAX_RECORD:
            records.append(stamp + self._tag_part + rest[:MAX_RECORD] + b"\n")
            rest = rest[MAX_RECORD:]
        self._pending = rest
        self._write(records)

    def flush(self, now_ns: int | None = None) -> None:
        """Write the unterminated rest of the output as a complete line: the stream has ended."""
        if self._pending:
            stamp = self._clock.stamp(time.time_ns() if now_ns is None else now_ns)
            self._write([stamp + self._tag_full + self._pending + b"\n"])
            self._pending = b""

    def _records(self, stamp: bytes, line: bytes) -> list[bytes]:
        out = []
        while len(line) > MAX_RECORD:
            out.append(stamp + self._tag_part + line[:MAX_RECORD] + b"\n")
            line = line[MAX_RECORD:]
        out.append(stamp + self._tag_full + line + b"\n")
        return out

    def _write(self, records: list[bytes]) -> None:
        batch: list[bytes] = []
        batch_size = 0
        for record in records:
            if self._size + batch_size > 0 and self._size + batch_size + len(record) > self.max_bytes:
                self._write_all(b"".join(batch))
                batch, batch_size = [], 0
                self._rotate()
            batch.append(record)
            batch_size += len(record)
        if batch:
            self._write_all(b"".join(batch))

    def _write_all(self, data: bytes) -> None:
        if self._fd < 0:
            self.dropped += len(data)
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError:
                self.dropped += len(view)
                return
            self._size += written
            view = view[written:]

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        try:
            if self.max_files <= 1:
                os.unlink(self._path(0))
            else:
                kept = 1
                while kept < self.max_files - 1 and os.path.exists(self._path(kept)):
                    kept += 1
                # Oldest first, so that every name always holds a complete file; the oldest
                # kept file is overwritten once there are max_files.
                for index in range(kept, 0, -1):
                    try:
                        os.replace(self._path(index - 1), self._path(index))
                    except FileNotFoundError:
                        pass
        except OSError:
            pass  # the directory went away (its container was deleted): the reopen drops instead
        try:
            self._open()
        except OSError:
            self._fd, self._size = -1, 0

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
