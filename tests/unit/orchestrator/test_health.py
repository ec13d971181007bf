import asyncio
import time
from datetime import timedelta

import pytest

from scheduler.domain import HealthCheck, HealthCheckKind
from scheduler.orchestrator import health


class _NoExec:
    async def exec(self, *args, **kwargs):  # pragma: no cover - not called for network probes
        raise AssertionError("exec must not be used by network probes")


async def _http_server(status: str) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_http_probe_passes_on_2xx_and_fails_on_5xx() -> None:
    good, good_port = await _http_server("200 OK")
    bad, bad_port = await _http_server("503 Service Unavailable")
    async with good, bad:
        ok = await health.probe(
            HealthCheck(HealthCheckKind.HTTP, port=good_port, path="/health"), _NoExec(), "c", "127.0.0.1"
        )
        assert ok.ok and "200" in ok.detail
        failed = await health.probe(HealthCheck(HealthCheckKind.HTTP, port=bad_port), _NoExec(), "c", "127.0.0.1")
        assert not failed.ok and "503" in failed.detail


async def test_tcp_probe_fails_on_a_closed_port() -> None:
    server, port = await _http_server("200 OK")
    async with server:
        assert (await health.probe(HealthCheck(HealthCheckKind.TCP, port=port), _NoExec(), "c", "127.0.0.1")).ok
    closed = await health.probe(HealthCheck(HealthCheckKind.TCP, port=port), _NoExec(), "c", "127.0.0.1")
    assert not closed.ok


async def test_unhealthy_after_retries_once_the_start_period_is_over() -> None:
    server, port = await _http_server("500 Internal Server Error")
    check = HealthCheck(
        HealthCheckKind.HTTP,
        port=port,
        interval=timedelta(milliseconds=20),
        retries=3,
        start_period=timedelta(milliseconds=100),
    )
    async with server:
        started = time.monotonic()
        with pytest.raises(health.Unhealthy, match="500"):
            await health.wait_healthy(check, _NoExec(), "c", "127.0.0.1", started)
        elapsed = time.monotonic() - started
    # Failures inside the start period did not count: at least the period plus the retries passed.
    assert elapsed >= 0.1 + 2 * 0.02


async def _raw_server(answer: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the prober stopped reading: what it should do
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_http_probe_fails_on_a_64_kib_status_line_without_raising() -> None:
    server, port = await _raw_server(b"HTTP/1.1 200 " + b"a" * 64 * 1024 + b"\r\n\r\nok")
    async with server:
        result = await health.probe(HealthCheck(HealthCheckKind.HTTP, port=port), _NoExec(), "c", "127.0.0.1")
    assert not result.ok
    assert f"longer than {health.MAX_STATUS_LINE}" in result.detail


async def test_http_probe_reads_bounded_headers_and_body() -> None:
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"b" * 100) for i in range(2000))
    server, port = await _raw_server(b"HTTP/1.1 204 No Content\r\n" + headers + b"\r\n" + b"c" * 10**6)
    async with server:
        result = await health.probe(HealthCheck(HealthCheckKind.HTTP, port=port), _NoExec(), "c", "127.0.0.1")
    # The headers never end within the bound: the answer is judged on its status line alone.
    assert result.ok and result.detail.startswith("GET /: 204")
    assert len(result.detail) <= 400


class _BrokenExec:
    async def exec(self, *args, **kwargs):
        raise ValueError("the runtime broke")


async def test_a_probe_that_errors_is_a_failed_probe() -> None:
    check = HealthCheck(HealthCheckKind.EXEC, command=("true",))
    result = await health.probe(check, _BrokenExec(), "c", "127.0.0.1")
    assert not result.ok and "ValueError: the runtime broke" in result.detail


def test_network_probes_in_the_start_period_pause_a_twentieth_of_the_time_since_the_start() -> None:
    tcp, http = HealthCheckKind.TCP, HealthCheckKind.HTTP
    assert health.start_pause(tcp, 0.0) == health.FIRST_INTERVAL
    assert health.start_pause(http, 0.3) == pytest.approx(0.015)
    assert health.start_pause(tcp, 0.6) == pytest.approx(0.03)
    assert health.start_pause(tcp, 30.0) == health.NETWORK_START_INTERVAL
    # An exec probe costs a runc exec: its pace does not shrink.
    assert health.start_pause(HealthCheckKind.EXEC, 0.0) == health.START_INTERVAL


def test_a_service_ready_a_second_after_its_start_is_probed_about_65_times_meanwhile() -> None:
    elapsed, probes = 0.0, 0
    while elapsed < 1.0:
        elapsed += health.start_pause(HealthCheckKind.TCP, elapsed)
        probes += 1
    assert 55 <= probes <= 75
