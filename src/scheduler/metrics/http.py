"""The ``/metrics`` endpoint: a small asyncio HTTP/1.0 server on a listener of its own.

It runs on the daemon's event loop (no thread), so a scrape can await the collector's refresh
and every metric is read in one consistent pass. One request per connection; requests are tiny
and bounded (a line and at most 100 header lines, 10 s to send them). The Prometheus client
library is imported when the endpoint first listens (``metrics.export``), not before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from scheduler import errors, log
from scheduler.metrics.collector import StateCollector
from scheduler.metrics.recorder import Recorder

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_log = log.get("metrics")
_REQUEST_DEADLINE = 10.0
_MAX_HEADER_LINES = 100


class MetricsServer:
    """Serves ``GET /metrics`` in Prometheus' text format."""

    def __init__(self, recorder: Recorder, collector: StateCollector) -> None:
        self._recorder = recorder
        self._registry: CollectorRegistry | None = None
        self._collector = collector
        self._server: asyncio.Server | None = None
        self.listen = ""
        self.bound_port = 0

    async def start(self, listen: str) -> None:
        """Listen on ``HOST:PORT`` (an empty address serves nothing).

        Raises:
            Unavailable: the address cannot be bound (the message names metrics.listen).
        """
        self.listen = listen
        if not listen:
            return
        if self._registry is None:
            from scheduler.metrics import export

            self._registry = export.registry_of(self._recorder, self._collector)
        host, _, port = listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(self._handle, host.strip("[]"), int(port))
        except OSError as err:
            raise errors.Unavailable(f"metrics.listen: cannot bind {listen}: {err.strerror or err}") from err
        self.bound_port = int(self._server.sockets[0].getsockname()[1])
        _log.info("metrics.started", listen=listen, port=self.bound_port)

    async def stop(self) -> None:
        """Stop listening (a scrape under way finishes within its deadline)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.bound_port = 0

    async def move(self, listen: str) -> None:
        """Serve on ``listen`` instead (a reload); the old listener stays if the new one cannot bind."""
        if listen == self.listen:
            return
        old = self._server
        self._server = None
        try:
            await self.start(listen)
        except errors.Unavailable:
            self._server = old
            raise
        if old is not None:
            old.close()
            await old.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_DEADLINE):
                request = (await reader.readline()).decode("latin-1").split()
                for _ in range(_MAX_HEADER_LINES):
                    if (await reader.readline()).strip() == b"":
                        break
                status, body, content_type = await self._answer(request)
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if request[:1] != ["HEAD"] else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request: list[str]) -> tuple[str, bytes, str]:
        text = "text/plain; charset=utf-8"
        if len(request) < 2:
            return "400 Bad Request", b"malformed request line\n", text
        method, target = request[0], request[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"only GET and HEAD\n", text
        if target != "/metrics":
            return "404 Not Found", b"metrics are at /metrics\n", text
        from scheduler.metrics import export

        assert self._registry is not None  # set before the listener that calls this
        await self._collector.refresh()
        return "200 OK", export.generate_latest(self._registry), export.CONTENT_TYPE_LATEST
