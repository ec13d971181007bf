"""The loop that copies stream pipes into their writers: for one container, or for all of a host's.

Streams come in groups (one container's stdout and stderr); once every stream of a group has
ended its ``on_end`` runs (the shared writer closes the connection its container's waiting
process holds, which lets that process exit). One stream failing ends that stream only.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from .records import Clock, StreamWriter

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    # ``signal`` pulls in ``enum`` (about 5 ms at start); the builtin module has all we use.
    import _signal as signal

READ_SIZE = 64 * 1024


class Group:
    """One container's streams (fd → writer) and what to do once all of them ended."""

    def __init__(self, writers: dict[int, StreamWriter], on_end: Callable[[], None] | None = None) -> None:
        self.writers = writers
        self.open = set(writers)
        self.on_end = on_end


class Pump:
    """Polls every stream of every group and extra fds (a listener, the signal wake-up pipe)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self._poller = select.poll()
        self._streams: dict[int, Group] = {}
        self._handlers: dict[int, Callable[[], None]] = {}
        self.stopping: float | None = None
        """Monotonic deadline set by SIGTERM/SIGINT: streams still open then are abandoned."""

    @property
    def streams(self) -> int:
        """How many streams are open."""
        return len(self._streams)

    def add(self, group: Group) -> None:
        """Start copying a group's streams."""
        for fd in group.writers:
            os.set_blocking(fd, False)
            self._streams[fd] = group
            self._poller.register(fd, select.POLLIN)

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler`` whenever ``fd`` is readable."""
        self._handlers[fd] = handler
        self._poller.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (it is not closed)."""
        if self._handlers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def run(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        """Copy until ``done()`` holds (checked after each wake-up and every ``timeout`` seconds)."""
        while not done():
            wait = timeout
            if self.stopping is not None:
                left = self.stopping - time.monotonic()
                if left <= 0:
                    return
                wait = left if wait is None else min(wait, left)
            for fd, _ in self._poller.poll(None if wait is None else int(wait * 1000) + 1):
                handler = self._handlers.get(fd)
                if handler is not None:
                    try:
                        handler()
                    except Exception:  # noqa: BLE001, S110 - a bad client must not end every container's logs
                        pass
                elif fd in self._streams:
                    self._copy(fd)

    def _copy(self, fd: int) -> None:
        group = self._streams[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        try:
            if data:
                group.writers[fd].feed(data)
                return
        except Exception:  # noqa: BLE001 - one stream's failure must not end the others
            pass
        self.end(fd)

    def end(self, fd: int) -> None:
        """Flush and close one stream; run its group's ``on_end`` when it was the last one."""
        group = self._streams.pop(fd)
        self._poller.unregister(fd)
        try:
            group.writers[fd].close()
        except OSError:
            pass
        os.close(fd)
        group.open.discard(fd)
        if not group.open and group.on_end is not None:
            group.on_end()

    def close(self) -> None:
        """End every stream still open (flushing what was read)."""
        for fd in list(self._streams):
            self.end(fd)


class Signals:
    """SIGTERM and SIGINT set the pump's drain deadline; restored on exit (tests run this in-process)."""

    def __init__(self, pump: Pump, drain_seconds: float) -> None:
        self._pump = pump
        self._drain = drain_seconds
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._handlers: dict[int, object] = {}
        self._previous = -1

    def __enter__(self) -> Signals:
        try:
            self._previous = signal.set_wakeup_fd(self._wake_write)
            for number in (signal.SIGTERM, signal.SIGINT):
                self._handlers[number] = signal.signal(number, self._on_signal)
        except ValueError:
            pass  # not the main thread (tests): only end of file stops it
        self._pump.watch(self._wake_read, self._drain_wake)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._handlers.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        if self._handlers:
            signal.set_wakeup_fd(self._previous)
        self._pump.unwatch(self._wake_read)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _on_signal(self, number: int, frame: object) -> None:
        if self._pump.stopping is None:
            self._pump.stopping = time.monotonic() + self._drain

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_read, 64)
        except BlockingIOError:
            pass
