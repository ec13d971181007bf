"""The grpc.aio server: interceptors, health, reflection, binding, graceful stop."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from scheduler import errors, log
from scheduler.api._gen.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.api.interceptors import RequestInterceptor, RpcObserver
from scheduler.api.servicer import SchedulerServicer
from scheduler.service import EnvironmentService

_log = log.get("server")

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


class ApiServer:
    """Serves SchedulerService plus grpc.health.v1 and reflection on TCP and/or a unix socket."""

    def __init__(
        self, service: EnvironmentService, listen: str, unix_socket: str = "", observer: RpcObserver | None = None
    ) -> None:
        self._listen = listen
        self._service = service
        self._unix_socket = unix_socket
        self._server = grpc.aio.server(
            interceptors=[RequestInterceptor(observer)],
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self._health = health.aio.HealthServicer()
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(service), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.bound_port = 0

    async def start(self) -> None:
        """Bind the addresses and start serving; health stays NOT_SERVING until :meth:`ready`."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._listen:
            try:
                self.bound_port = self._server.add_insecure_port(self._listen)
            except RuntimeError as err:
                raise errors.Unavailable(f"server.listen: cannot bind {self._listen}: {err}") from err
            if self.bound_port == 0:
                raise errors.Unavailable(f"server.listen: cannot bind {self._listen} (address in use?)")
        if self._unix_socket:
            path = Path(self._unix_socket)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket():
                path.unlink()
            self._server.add_insecure_port(f"unix://{path.resolve()}")
        await self._server.start()
        if self._unix_socket:
            os.chmod(self._unix_socket, 0o660)
        _log.info("server.started", listen=self._listen, port=self.bound_port, unix_socket=self._unix_socket)

    async def ready(self) -> None:
        """Report SERVING on the health service."""
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, end open streams, then give in-flight RPCs ``grace`` seconds."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._service.begin_shutdown()
        await self._server.stop(grace)
        if self._unix_socket:
            Path(self._unix_socket).unlink(missing_ok=True)

    async def wait(self) -> None:
        """Block until the server terminates."""
        await self._server.wait_for_termination()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)
