"""The wake gate on loopback sockets: holds, wakes once, forwards, and keeps every bound."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from scheduler.domain import Endpoint
from scheduler.network import iptables
from scheduler.network.names import Names
from scheduler.network.ports import bind
from scheduler.network.wake import WakeGate, key_of


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, int]]:
    """An echo server standing in for the container."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def _held() -> tuple[Endpoint, socket.socket]:
    sock = bind("127.0.0.1", 0, "tcp")
    return Endpoint("web", "127.0.0.1", sock.getsockname()[1], 80), sock


async def _ask(port: int, payload: bytes = b"hi") -> bytes:
    """Send ``payload`` and read the answer until EOF; empty when the gate closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""  # closed with the request unread: the kernel answers with a reset
    finally:
        writer.close()


async def test_held_connections_wake_once_and_are_forwarded(upstream: tuple[str, int]) -> None:
    endpoint, sock = _held()
    woken: list[int] = []
    gate = WakeGate("env", [(endpoint, sock)], lambda e: woken.append(e.host_port), max_pending=4, deadline=5)
    gate.hold()
    try:
        asks = [asyncio.create_task(_ask(endpoint.host_port, f"n{i}".encode())) for i in range(3)]
        async with asyncio.timeout(5):
            while gate.pending < 3:
                await asyncio.sleep(0.01)
        assert woken and set(woken) == {endpoint.host_port}
        gate.forward({key_of(endpoint): upstream})
        assert sorted(await asyncio.gather(*asks)) == [b"echo:n0", b"echo:n1", b"echo:n2"]
        assert gate.pending == 0
        # Awake, a connection that still reaches the socket is forwarded at once.
        assert await _ask(endpoint.host_port, b"late") == b"echo:late"
    finally:
        await gate.close()
        sock.close()


async def test_deadline_bound_and_refusal_close_connections() -> None:
    endpoint, sock = _held()
    gate = WakeGate("env", [(endpoint, sock)], lambda e: None, max_pending=1, deadline=0.2)
    gate.hold()
    try:
        first = asyncio.create_task(_ask(endpoint.host_port))
        async with asyncio.timeout(5):
            while gate.pending < 1:
                await asyncio.sleep(0.01)
        assert await _ask(endpoint.host_port) == b""  # over max_pending: closed at once
        assert await first == b""  # held past the deadline: closed
        gate.refuse()
        assert await _ask(endpoint.host_port) == b""
        assert gate.pending == 0
    finally:
        await gate.close()
        sock.close()


def test_hostport_counts_read_the_dnat_rule_counters() -> None:
    names = Names("t1")
    chain = names.hostports_chain
    saved = "\n".join(
        [
            "*nat",
            f":{chain} - [0:0]",
            f"[3:180] -A {chain} -s 127.0.0.0/8 -d 127.0.0.1/32 -p tcp -m tcp --dport 20001 -j MARK --set-xmark 0x1",
            f"[3:180] -A {chain} -d 127.0.0.1/32 -p tcp -m tcp --dport 20001 -j t1-SVC-X",
            f"[5:300] -A {chain} -p tcp -m tcp --dport 20002 -j t1-SVC-Y",
            "[9:9] -A OTHER -p tcp -m tcp --dport 20003 -j ACCEPT",
            "COMMIT",
        ]
    )
    assert iptables.hostport_counts(names, saved) == {
        ("127.0.0.1", 20001, "tcp"): 3,
        ("0.0.0.0", 20002, "tcp"): 5,
    }


async def test_a_port_the_gate_served_can_be_held_again_at_once(upstream: tuple[str, int]) -> None:
    endpoint, sock = _held()
    gate = WakeGate("env", [(endpoint, sock)], lambda e: None, max_pending=2, deadline=5)
    gate.hold()
    gate.forward({key_of(endpoint): upstream})
    assert await _ask(endpoint.host_port) == b"echo:hi"  # the gate closes first: TIME_WAIT on its side
    await gate.close()
    sock.close()
    again = bind("127.0.0.1", endpoint.host_port, "tcp")
    try:
        # ...and the new holder refuses every other bind again, reuse or not.
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", endpoint.host_port))
    finally:
        again.close()
