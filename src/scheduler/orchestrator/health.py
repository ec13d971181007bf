"""Health probes (exec, TCP connect, HTTP GET) and Docker's counting rules around them.

A probe that passes makes a container healthy at once, even inside the start period; failures
count only after the start period, and ``retries`` consecutive ones make it unhealthy. Inside the
start period probes run every ``START_INTERVAL`` (Docker's ``start_interval``; TCP and HTTP
probes at a pause of a twentieth of the time since the start, from ``FIRST_INTERVAL`` up to
``NETWORK_START_INTERVAL``: see :func:`start_pause`), so a service that becomes ready quickly
is noticed quickly, whatever its steady-state interval.

HTTP probes are a small bounded exchange of our own rather than httpx: measured on loopback
(``python -m bench.probes``, 400 probes each, 2 shared cores), a probe took 0.46 ms (median)
here against 12.5 ms with an httpx client per probe and 14.6 ms with one shared httpx client
(keep-alive off), 27-32 times as long; and httpx's parser reads up to 100 KiB of head where
this reads 16 KiB and fails a status line over 4 KiB.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from scheduler import errors
from scheduler.domain import HealthCheck, HealthCheckKind
from scheduler.orchestrator.observer import NULL_OBSERVER, Observer
from scheduler.runtime.base import ContainerRuntime

_MAX_OUTPUT = 300
MAX_STATUS_LINE = 4096
"""Bytes an HTTP probe accepts for the status line; a longer one fails the probe."""
MAX_HEAD = 16 * 1024
"""Bytes an HTTP probe reads for the status line and headers together, then up to 4 KiB of body."""
START_INTERVAL = 0.1
"""Seconds between probes while the start period lasts (at most)."""
FIRST_INTERVAL = 0.005
"""Seconds before the second TCP or HTTP probe, the shortest pause between them."""
NETWORK_START_INTERVAL = 0.05
"""Seconds between TCP or HTTP probes while the start period lasts (at most)."""
START_PAUSE_SHARE = 0.05
"""A TCP or HTTP probe in the start period follows the previous one after this share of the time
since the start: readiness is noticed within about a twentieth of the time it took. A refused
connect costs next to nothing (about 0.2 ms of the daemon's CPU), and most services answer
within a few hundred milliseconds of their start (PostgreSQL from a template 0.15-0.4 s after
it, then the backend and the frontend some 20-50 ms after theirs): a pause grown by a quarter
per probe from 20 ms noticed each of them 15-25 ms late on average, once per service of the
chain; a tenth of the time since the start noticed PostgreSQL 13.6 ms late on average (ready
anywhere from 0.15 to 0.4 s, simulated), this pause 7.0 ms. A service ready only after a second
is probed every ``NETWORK_START_INTERVAL``, as before: about 65 probes in its first second (45
with a tenth, 23 with the quarter growth), twenty more refused connects per start. Exec probes
(a runc exec each) keep ``START_INTERVAL``."""


def start_pause(kind: HealthCheckKind, since_start: float) -> float:
    """Seconds to wait before the next probe inside the start period, ``since_start`` seconds after the start."""
    if kind in (HealthCheckKind.TCP, HealthCheckKind.HTTP):
        return min(max(since_start * START_PAUSE_SHARE, FIRST_INTERVAL), NETWORK_START_INTERVAL)
    return START_INTERVAL


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe: whether it passed and what it said."""

    ok: bool
    detail: str


async def probe(
    check: HealthCheck, runtime: ContainerRuntime, container_id: str, ip: str, observer: Observer = NULL_OBSERVER
) -> ProbeResult:
    """Run one probe of ``check`` against a container and tell ``observer``; never raises (only cancellation passes).

    Whatever the container answers, or whatever goes wrong asking it, is a failed probe: a
    container must not be able to stop the monitor that watches it.
    """
    started = time.monotonic()
    result = await _probe(check, runtime, container_id, ip)
    if check.kind is not HealthCheckKind.NONE:
        observer.probe_finished(check.kind.value, result.ok, time.monotonic() - started)
    return result


async def _probe(check: HealthCheck, runtime: ContainerRuntime, container_id: str, ip: str) -> ProbeResult:
    timeout = check.timeout.total_seconds()
    try:
        if check.kind is HealthCheckKind.EXEC:
            result = await runtime.exec(container_id, check.command, timeout=check.timeout)
            output = result.output.strip()[-_MAX_OUTPUT:]
            return ProbeResult(result.exit_code == 0, f"exit code {result.exit_code}: {output}".rstrip(": "))
        if check.kind is HealthCheckKind.TCP:
            return await asyncio.wait_for(_tcp(ip, check.port), timeout)
        if check.kind is HealthCheckKind.HTTP:
            return await asyncio.wait_for(_http(ip, check.port, check.path), timeout)
    except TimeoutError:
        return ProbeResult(False, f"probe timed out after {timeout:g}s")
    except (OSError, errors.SchedulerError) as err:
        return ProbeResult(False, str(err) or type(err).__name__)
    except Exception as err:  # noqa: BLE001 - any other error is a failed probe too, never a dead monitor
        return ProbeResult(False, f"probe failed: {type(err).__name__}: {err}"[:_MAX_OUTPUT])
    return ProbeResult(True, "no health check")


async def _tcp(ip: str, port: int) -> ProbeResult:
    _, writer = await asyncio.open_connection(ip, port)
    writer.close()
    await writer.wait_closed()
    return ProbeResult(True, f"connected to {ip}:{port}")


async def _http(ip: str, port: int, path: str) -> ProbeResult:
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: scheduler-health\r\n\r\n".encode())
        await writer.drain()
        data = await _read_bounded(reader)
    finally:
        writer.close()
    status_line, newline, _ = data.partition(b"\n")
    if len(status_line) > MAX_STATUS_LINE or (not newline and len(data) >= MAX_STATUS_LINE):
        return ProbeResult(False, f"GET {path}: status line longer than {MAX_STATUS_LINE} bytes")
    parts = status_line.decode(errors="replace").strip().split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeResult(False, f"GET {path}: not an HTTP answer: {status_line[:80]!r}")
    code = int(parts[1])
    _, _, body = data.partition(b"\r\n\r\n")
    message = body.decode(errors="replace").strip()[:_MAX_OUTPUT]
    return ProbeResult(200 <= code < 400, f"GET {path}: {code} {message}".strip())


async def _read_bounded(reader: asyncio.StreamReader) -> bytes:
    """The answer's head (status line and headers, at most ``MAX_HEAD`` bytes) and 4 KiB of body.

    Stops early at a status line over ``MAX_STATUS_LINE`` bytes: nothing a container sends can
    make the prober buffer more than this.
    """
    data = b""
    while len(data) < MAX_HEAD:
        if b"\n" not in data and len(data) >= MAX_STATUS_LINE:
            return data
        end = data.find(b"\r\n\r\n")
        if end >= 0 and len(data) - end - 4 >= 4096:
            return data
        chunk = await reader.read(4096)
        if not chunk:
            return data
        data += chunk
    return data


class Unhealthy(Exception):
    """A container failed ``retries`` consecutive probes after its start period."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def wait_healthy(
    check: HealthCheck,
    runtime: ContainerRuntime,
    container_id: str,
    ip: str,
    started: float,
    observer: Observer = NULL_OBSERVER,
) -> ProbeResult:
    """Probe every ``interval`` until one passes; raise :class:`Unhealthy` per Docker's rules.

    ``started`` is the container's start time on the ``time.monotonic`` clock.
    """
    failures = 0
    while True:
        result = await probe(check, runtime, container_id, ip, observer)
        if result.ok:
            return result
        interval = check.interval.total_seconds()
        since_start = time.monotonic() - started
        if since_start >= check.start_period.total_seconds():
            failures += 1
            if failures >= check.retries:
                raise Unhealthy(result.detail)
        else:
            interval = min(interval, start_pause(check.kind, since_start))
        await asyncio.sleep(interval)
