"""The log writer a container's shim runs for its stdout and stderr, and the format it writes.

containerd's ``binary://`` stdio scheme makes the shim start this program with fd 3 = the
container's stdout, fd 4 = its stderr and fd 5 = a readiness pipe (closed once the files are
open, or Tasks.Create blocks). Its arguments come from the URI's query as ``key value`` pairs in
no particular order: ``dir`` (required), ``max-bytes`` and ``max-files``.

It is the only writer of its files, so it can rotate them by itself without losing or repeating
a line. It is a child of the shim, so it keeps writing while the daemon is down; the shim
signals it (SIGTERM) when the task is deleted, after closing the pipes, and it exits once it has
drained them.

File format (one file per stream, ``stdout.log`` and ``stderr.log``), the CRI log format::

    2026-11-27T16:00:00.123456789Z stdout F text of the line

RFC 3339 UTC time with nanoseconds, stream, tag, then the bytes of the line without its
newline. Tag ``F`` ends a line (also the last one, when output ended without a newline); ``P``
is a piece of a line longer than ``MAX_RECORD`` bytes, and a reader joins ``P`` pieces with the
next ``F``. Rotation renames ``stdout.log`` to ``stdout.log.1`` (``.1`` to ``.2``, ...) once
the next record would take it over ``max-bytes``, keeping ``max-files`` files in all.

The process runs with ``python -I -S``: this module imports only the standard library, and
only modules that are cheap to load, because the shim waits for it in Tasks.Create.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    # ``signal`` pulls in ``enum`` (about 5 ms at start); the builtin module has all we use.
    import _signal as signal

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_FILES = 3
MAX_RECORD = 16 * 1024
"""Longest line piece in one record; longer lines are split into ``P`` records (as Docker does)."""
STREAMS = ("stdout", "stderr")
READ_SIZE = 64 * 1024
DRAIN_SECONDS = 5.0
"""How long, after SIGTERM, the pipes may take to reach end of file before the writer exits."""
STDOUT_FD, STDERR_FD, READY_FD = 3, 4, 5


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
        finally:
            self._open()

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def run(
    directory: str,
    inputs: dict[int, str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    ready_fd: int = -1,
    drain_seconds: float = DRAIN_SECONDS,
) -> dict[str, int]:
    """Copy each input fd (to its stream name) into records until every input ends.

    Returns the bytes dropped per stream (write errors). SIGTERM or SIGINT makes it read what
    is left in the pipes for up to ``drain_seconds``, then flush and return.
    """
    os.makedirs(directory, exist_ok=True)
    clock = Clock()
    writers = {fd: StreamWriter(directory, stream, max_bytes, max_files, clock) for fd, stream in inputs.items()}
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping: list[float] = []

    def on_signal(number: int, frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic() + drain_seconds)

    handlers = {}
    previous = -1
    try:
        previous = signal.set_wakeup_fd(wake_write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, on_signal)
    except ValueError:
        pass  # not the main thread (tests): only end of file stops it
    # Ready only once a SIGTERM would be handled: the shim may send one right after Tasks.Create.
    if ready_fd >= 0:
        os.close(ready_fd)
    poller = select.poll()
    for fd in writers:
        poller.register(fd, select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    open_fds = set(writers)
    try:
        while open_fds:
            timeout_ms = None
            if stopping:
                left = stopping[0] - time.monotonic()
                if left <= 0:
                    break
                timeout_ms = int(left * 1000) + 1
            for fd, _ in poller.poll(timeout_ms):
                if fd == wake_read:
                    try:
                        os.read(wake_read, 64)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                if data:
                    writers[fd].feed(data)
                else:
                    writers[fd].flush()
                    poller.unregister(fd)
                    open_fds.discard(fd)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if handlers:
            signal.set_wakeup_fd(previous)
        os.close(wake_read)
        os.close(wake_write)
        for writer in writers.values():
            writer.close()
    return {writer.stream: writer.dropped for writer in writers.values()}


def parse_args(argv: list[str]) -> tuple[str, int, int]:
    """``dir``, ``max-bytes`` and ``max-files`` from ``key value`` pairs in any order."""
    if len(argv) % 2:
        raise ValueError(f"arguments must be key value pairs, got {argv!r}")
    options = dict(zip(argv[::2], argv[1::2], strict=True))
    unknown = set(options) - {"dir", "max-bytes", "max-files"}
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)!r}")
    directory = options.get("dir", "")
    if not directory.startswith("/"):
        raise ValueError(f"dir must be an absolute path, got {directory!r}")
    max_bytes = int(options.get("max-bytes", DEFAULT_MAX_BYTES))
    max_files = int(options.get("max-files", DEFAULT_MAX_FILES))
    if max_bytes <= 0 or max_files <= 0:
        raise ValueError(f"max-bytes and max-files must be positive, got {max_bytes} and {max_files}")
    return directory, max_bytes, max_files


def main(argv: list[str]) -> int:
    """Entry point of the shim's logger: arguments from the ``binary://`` URI query."""
    try:
        directory, max_bytes, max_files = parse_args(argv)
    except ValueError as err:
        print(f"scheduler-logger: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    run(directory, {STDOUT_FD: STREAMS[0], STDERR_FD: STREAMS[1]}, max_bytes, max_files, ready_fd=READY_FD)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
