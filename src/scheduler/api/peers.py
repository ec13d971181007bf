"""What the transport says about a caller: its unix credentials.

grpc.aio does not expose a connection's socket, so the unix socket clients see is the daemon's
own: :class:`UnixListener` accepts there, reads ``SO_PEERCRED`` (uid, gid, pid, set by the kernel
at ``connect``), and relays the bytes to gRPC's socket in a private directory. Each relay
connects from its own abstract address, which gRPC reports as the call's peer
(``unix-abstract:<name>``), so a call maps back to the credentials of the connection it came on.

For plaintext TCP on loopback, :mod:`scheduler.api.loopback` asks the kernel (sock_diag netlink)
for the uid owning the client's end of the connection, as identd does.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import secrets
import socket
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scheduler import errors, log

_log = log.get("peers")

_PRIVATE_PREFIX = "scheduler-api-"
_UCRED = struct.Struct("3i")
"""struct ucred: pid, uid, gid."""


@dataclass(frozen=True)
class Credentials:
    """A local process as the kernel identified it."""

    uid: int
    gid: int
    pid: int


class UnixListener:
    """The public unix socket: authenticates each connection, then relays it to gRPC."""

    def __init__(self, path: Path, mode: int, group: str) -> None:
        self.path = path
        self._mode = mode
        self._group = group
        _sweep_private_dirs()
        # 0700: only the daemon's user enters. Named by pid, so a killed daemon's is found again.
        self._private = Path(tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-"))
        self.backend = self._private / "grpc.sock"
        """Where gRPC itself listens; unreachable to anyone but the daemon's user."""
        self._peers: dict[str, Credentials] = {}
        self._server: asyncio.AbstractServer | None = None
        self._relays: set[_Relay] = set()

    def credentials(self, peer: str) -> Credentials | None:
        """The credentials of the connection gRPC reports as ``peer``, if it came through here."""
        return self._peers.get(peer)

    async def start(self) -> None:
        """Create the socket with its final mode and group, then make it appear at ``path`` at once.

        Raises:
            Unavailable: another process serves on ``path``, or it cannot be created.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if _serving(self.path):
            raise errors.Unavailable(f"server.unix_socket: another process serves on {self.path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound in a private directory, given its mode and group there, then renamed into place:
        # nobody can connect to it before its permissions are final.
        staging = Path(tempfile.mkdtemp(prefix=".scheduler-", dir=self.path.parent))
        try:
            staged = staging / "s"
            sock.bind(str(staged))
            os.chmod(staged, self._mode)
            if self._group:
                os.chown(staged, -1, _group_id(self._group))
            sock.listen(128)
            os.replace(staged, self.path)
        except OSError as err:
            sock.close()
            raise errors.Unavailable(f"server.unix_socket: cannot create {self.path}: {err}") from err
        finally:
            with contextlib.suppress(OSError):
                for leftover in staging.iterdir():
                    leftover.unlink()
                staging.rmdir()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Relay(self).client, sock=sock)

    def stop_accepting(self) -> None:
        """Refuse new connections (the path disappears); relays in flight go on."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            if self.path.is_socket():
                self.path.unlink()

    async def close(self) -> None:
        """Stop accepting, end open relays, remove both sockets."""
        self.stop_accepting()
        for relay in list(self._relays):
            await relay.close()
        with contextlib.suppress(OSError):
            self.backend.unlink()
        with contextlib.suppress(OSError):
            self._private.rmdir()

    async def _connect_backend(self) -> tuple[socket.socket, str]:
        loop = asyncio.get_running_loop()
        for _ in range(5):
            name = f"scheduler-{os.getpid()}-{secrets.token_hex(8)}"
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.bind("\0" + name)
            except OSError:  # someone holds that abstract name: draw another
                upstream.close()
                continue
            upstream.setblocking(False)
            try:
                await loop.sock_connect(upstream, str(self.backend))
            except BaseException:
                upstream.close()
                raise
            return upstream, name
        raise OSError("no free abstract address for the relay")


class _End(asyncio.Protocol):
    """One end of a relay: what it receives is written to the other end, which it slows when full.

    Bytes go from transport to transport in the event loop's callbacks, with no coroutine per
    chunk: the relay costs about as much as a socket copy.
    """

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: _End | None = None
        self.ended = False
        """The peer half-closed: nothing more will arrive from it."""
        self.early: list[bytes] = []
        """Bytes read before the other end existed, written to it once it does: a paused transport
        still reads on Python 3.11 before 3.11.3 (Debian's 3.11.2), until its first resume."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._relay.connected(self)

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        self.ended = True
        other = self.other.transport if self.other is not None else None
        if other is not None and other.can_write_eof() and not other.is_closing():
            other.write_eof()
        self._relay.ended()
        return True  # keep the other direction open until it ends too

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None and not self.other.transport.is_closing():
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            _log.debug("unix.relay_ended", error=str(exc))
        self._relay.finish()


class _Relay:
    """A client's connection to the public socket, authenticated, and its own connection to gRPC."""

    def __init__(self, listener: UnixListener) -> None:
        self._listener = listener
        self.client = _End(self)
        self.backend = _End(self)
        self.client.other, self.backend.other = self.backend, self.client
        self._peer = ""
        self._connecting: asyncio.Task[None] | None = None
        self._finished = False

    def connected(self, end: _End) -> None:
        if end is not self.client:
            return
        assert end.transport is not None
        end.transport.pause_reading()  # until gRPC's side is there to take the bytes
        self._listener._relays.add(self)  # noqa: SLF001 - the listener's own helper
        self._connecting = asyncio.get_running_loop().create_task(self._connect(end.transport))

    async def _connect(self, client: asyncio.Transport) -> None:
        try:
            sock: socket.socket = client.get_extra_info("socket")
            pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            upstream, name = await self._listener._connect_backend()  # noqa: SLF001
            if self._finished:  # the client left meanwhile
                upstream.close()
                return
            self._peer = f"unix-abstract:{name}"
            self._listener._peers[self._peer] = Credentials(uid, gid, pid)  # noqa: SLF001
            await asyncio.get_running_loop().create_unix_connection(lambda: self.backend, sock=upstream)
            if self._finished and self.backend.transport is not None:
                self.backend.transport.close()
                return
            backend = self.backend.transport
            if backend is not None:
                for chunk in self.client.early:
                    backend.write(chunk)
                self.client.early.clear()
                if self.client.ended and backend.can_write_eof():
                    backend.write_eof()
        except OSError as err:
            _log.debug("unix.relay_ended", error=str(err))
            self.finish()
            return
        if not client.is_closing():
            client.resume_reading()

    def ended(self) -> None:
        """One side half-closed; once both have, the relay is over."""
        if self.client.ended and self.backend.ended:
            self.finish()

    def finish(self) -> None:
        """Close both connections (what is buffered is still sent) and forget the credentials."""
        if self._finished:
            return
        self._finished = True
        self._listener._peers.pop(self._peer, None)  # noqa: SLF001
        self._listener._relays.discard(self)  # noqa: SLF001
        for end in (self.client, self.backend):
            if end.transport is not None:
                end.transport.close()

    async def close(self) -> None:
        """End the relay now (the daemon is stopping)."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
        self.finish()


def _sweep_private_dirs() -> None:
    """Remove the private directories of daemons that died without closing (killed)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*-*"):
        pid = directory.name.removeprefix(_PRIVATE_PREFIX).partition("-")[0]
        # Another daemon may sweep the same directory at once: whatever vanished is done.
        with contextlib.suppress(OSError):
            if not pid.isdigit() or directory.stat().st_uid != os.getuid() or Path(f"/proc/{pid}").exists():
                continue
            for leftover in directory.iterdir():
                leftover.unlink()
            directory.rmdir()


def _serving(path: Path) -> bool:
    if not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError as err:
        raise OSError(f"no group {group!r}") from err
