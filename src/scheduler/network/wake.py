"""Wake on connection: the daemon answers a sleeping environment's published TCP ports itself.

While an environment sleeps its services have no backends, so its host port rules DNAT nothing
and a connection reaches the socket the daemon already holds on the port (see ``ports.py``). The
gate listens on that socket, accepts at most ``max_pending`` connections, asks for the
environment to be woken on the first, and once it is up forwards each held connection to the
container serving the port. A connection still held at its deadline is closed: nothing waits
unbounded, and no loop polls.

The socket keeps listening after the wake, and the gate keeps accepting: Linux can make a socket
stop listening (``shutdown`` or ``connect(AF_UNSPEC)``), but measured on 6.x that socket then
never accepts again, and closing it to bind a fresh one races other programs and fails while a
forwarded connection still uses the port. With the rules restored no new connection reaches the
socket; one that slipped in while the rules changed is forwarded like the held ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
from collections.abc import Callable, Mapping, Sequence

from scheduler import domain, log

_log = log.get("wake")

Target = tuple[str, int]
"""Where a published port leads once the environment is up: container address and port."""
PortKey = tuple[str, int]
"""A published port: host address and host port."""

CONNECT_TIMEOUT = 5.0
"""Seconds to reach the container once the environment is up."""
CHUNK = 64 * 1024


class _Mode(enum.Enum):
    HOLD = "hold"
    FORWARD = "forward"
    REFUSE = "refuse"


def key_of(endpoint: domain.Endpoint) -> PortKey:
    """The key of a published port."""
    return (endpoint.host_ip, endpoint.host_port)


class WakeGate:
    """Accepts connections on one environment's held sockets; see the module docstring.

    Args:
        env: the environment's name (for logs).
        listeners: its published TCP ports and the daemon's bound sockets on them.
        wake: called (with the port) for each accepted connection while holding; must be cheap
            and idempotent, e.g. submitting a start unless one is under way.
        max_pending: connections held at once; more are closed at once.
        deadline: seconds a connection is held at most before it is closed.
    """

    def __init__(
        self,
        env: str,
        listeners: Sequence[tuple[domain.Endpoint, socket.socket]],
        wake: Callable[[domain.Endpoint], None],
        *,
        max_pending: int,
        deadline: float,
    ) -> None:
        self.env = env
        self._listeners = list(listeners)
        self._wake = wake
        self._max_pending = max_pending
        self._deadline = deadline
        self._mode = _Mode.HOLD
        self._targets: dict[PortKey, Target] = {}
        self._changed = asyncio.Event()
        self._accepting: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.pending = 0
        """Connections held now, waiting for the wake."""
        self.accepted = 0
        """Connections accepted since the gate was made."""

    @property
    def ports(self) -> list[domain.Endpoint]:
        """The published ports the gate listens on."""
        return [endpoint for endpoint, _ in self._listeners]

    def hold(self) -> None:
        """Listen and hold new connections (the environment went to sleep)."""
        self._set(_Mode.HOLD, {})
        if self._accepting:
            return
        for endpoint, sock in self._listeners:
            # A listening socket refuses every other bind, reuse or not; allowing reuse here only
            # lets the TIME_WAIT remnants of the connections it accepts allow it too, so the port
            # can be bound again at once when it is released (see ports.bind).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.listen(self._max_pending)
            sock.setblocking(False)
            self._accepting.append(asyncio.create_task(self._accept(endpoint, sock), name=f"wake:{self.env}"))

    def forward(self, targets: Mapping[PortKey, Target]) -> None:
        """The environment is up: forward held and new connections to ``targets``."""
        self._set(_Mode.FORWARD, dict(targets))

    def refuse(self) -> None:
        """The wake failed: close held and new connections."""
        self._set(_Mode.REFUSE, {})

    async def close(self) -> None:
        """Stop accepting and end every connection the gate holds or forwards (the sockets stay)."""
        tasks = [*self._accepting, *self._connections]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._accepting.clear()

    def _set(self, mode: _Mode, targets: dict[PortKey, Target]) -> None:
        self._mode = mode
        self._targets = targets
        # Wake the held connections to look again; the next holders wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _accept(self, endpoint: domain.Endpoint, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as err:
                # The port was released (the environment is being deleted): nothing more to accept.
                _log.info("wake.listener_closed", env=self.env, port=endpoint.host_port, error=str(err))
                return
            self.accepted += 1
            if self._mode is _Mode.REFUSE or (self._mode is _Mode.HOLD and self.pending >= self._max_pending):
                conn.close()
                continue
            task = asyncio.create_task(self._serve(endpoint, conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, endpoint: domain.Endpoint, conn: socket.socket) -> None:
        try:
            if self._mode is _Mode.HOLD:
                self.pending += 1
                try:
                    self._wake(endpoint)
                    async with asyncio.timeout(self._deadline):
                        while self._mode is _Mode.HOLD:
                            await self._changed.wait()
                except TimeoutError:
                    _log.warning("wake.deadline", env=self.env, port=endpoint.host_port, seconds=self._deadline)
                    return
                finally:
                    self.pending -= 1
            target = self._targets.get(key_of(endpoint))
            if self._mode is _Mode.FORWARD and target is not None:
                await forward(conn, target)
        finally:
            conn.close()


async def forward(conn: socket.socket, target: Target) -> None:
    """Relay bytes between an accepted connection and ``target`` until both sides are done."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            up_reader, up_writer = await asyncio.open_connection(*target)
    except (OSError, TimeoutError) as err:
        _log.warning("wake.forward_failed", target=f"{target[0]}:{target[1]}", error=str(err))
        return
    conn.setblocking(False)
    down_reader, down_writer = await asyncio.open_connection(sock=conn)
    writers = (up_writer, down_writer)
    try:
        await asyncio.gather(_pipe(down_reader, up_writer, writers), _pipe(up_reader, down_writer, writers))
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, both: Sequence[asyncio.StreamWriter]
) -> None:
    """Copy one direction; its end half-closes the other side, an error closes both."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        for other in both:
            other.close()
