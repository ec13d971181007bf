"""The unix socket's relay: bytes pass both ways intact (flow control included), credentials are
known while the connection lasts and forgotten after, and closing the listener ends open relays."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from scheduler.api.peers import UnixListener


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peers.append(writer.get_extra_info("peername"))
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


peers: list[bytes] = []


async def test_bytes_pass_both_ways_and_credentials_live_as_long_as_the_connection(tmp_path: Path) -> None:
    listener = UnixListener(tmp_path / "api.sock", 0o600, "")
    backend = await asyncio.start_unix_server(_echo, path=str(listener.backend))
    await listener.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(listener.path))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), timeout=10) == b"ping"
        peer = "unix-abstract:" + peers[-1].decode().lstrip("\0")
        creds = listener.credentials(peer)
        assert creds is not None and (creds.uid, creds.pid) == (os.getuid(), os.getpid())
        payload = os.urandom(8 * 1024 * 1024)  # far more than any buffer: flow control must hold

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.readexactly(len(payload)), timeout=60)
        await sending
        assert received == payload
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # both ends closed
        writer.close()
        for _ in range(100):
            if listener.credentials(peer) is None:
                break
            await asyncio.sleep(0.05)
        assert listener.credentials(peer) is None

        # A relay still open when the listener closes is ended.
        reader, writer = await asyncio.open_unix_connection(str(listener.path))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), timeout=10) == b"ping"
        await listener.close()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        writer.close()
        assert not listener.path.exists() and not listener.backend.exists()
    finally:
        await listener.close()
        backend.close()
        await backend.wait_closed()
