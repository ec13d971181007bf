"""The grpc.aio server: interceptors, health, reflection, binding, graceful stop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from scheduler import domain, errors, log
from scheduler.api._gen.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from scheduler.api.gate import Gate
from scheduler.api.interceptors import RequestInterceptor, RpcObserver
from scheduler.api.peers import UnixListener
from scheduler.api.registry import WrappingRegistry
from scheduler.api.servicer import SchedulerServicer
from scheduler.config import AuthSettings, ServerSettings, TlsSettings
from scheduler.service import EnvironmentService

_log = log.get("server")

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
IMAGES_HEALTH = "scheduler.images"
"""Health service name that turns SERVING once the import of the ``images.preload`` archives is
over (done, or failed and logged); the daemon serves before that."""


class ApiServer:
    """Serves SchedulerService plus grpc.health.v1 and reflection on a unix socket and/or TCP.

    Every SchedulerService call passes the :class:`Gate` (who may call). The unix socket is a
    :class:`UnixListener` in front of gRPC's own socket, so that callers' credentials are known.
    """

    def __init__(
        self,
        service: EnvironmentService,
        settings: ServerSettings,
        auth: AuthSettings | None = None,
        observer: RpcObserver | None = None,
    ) -> None:
        self._settings = settings
        self._listen = settings.listen
        self._service = service
        self._unix = (
            UnixListener(Path(settings.unix_socket), settings.unix_socket_mode, settings.unix_socket_group)
            if settings.unix_socket
            else None
        )
        self._gate = Gate(
            auth or AuthSettings(),
            self._labels_of,
            self._unix,
            lambda: self.bound_port,
            client_certificates=bool(settings.tls.client_ca_file),
        )
        self._server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)],
        )
        # Every handler is wrapped (request id, access log, gate, errors) once, as it registers.
        registry: Any = WrappingRegistry(self._server, RequestInterceptor(observer, self._gate))
        self._health = health.aio.HealthServicer()
        self._servicer = SchedulerServicer(service)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(self._servicer, registry)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, registry)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), registry)
        self.bound_port = 0

    def set_reload(self, reload: Callable[[], Awaitable[domain.ReloadReport]]) -> None:
        """Serve ReloadConfiguration with ``reload`` (the daemon's reloader)."""
        self._servicer.reload = reload

    def set_auth(self, auth: AuthSettings) -> None:
        """Apply new tokens and role bindings to the calls that follow (a configuration reload)."""
        self._gate.apply(auth)

    async def start(self) -> None:
        """Bind the addresses and start serving; health stays NOT_SERVING until :meth:`ready`."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(IMAGES_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._listen:
            try:
                tls = self._settings.tls
                if tls.cert_file:
                    self.bound_port = self._server.add_secure_port(self._listen, _tls_credentials(tls))
                else:
                    self.bound_port = self._server.add_insecure_port(self._listen)
            except RuntimeError as err:
                raise errors.Unavailable(f"server.listen: cannot bind {self._listen}: {err}") from err
            if self.bound_port == 0:
                raise errors.Unavailable(f"server.listen: cannot bind {self._listen} (address in use?)")
        if self._unix is not None:
            self._server.add_insecure_port(f"unix:{self._unix.backend}")
        await self._server.start()
        if self._unix is not None:
            try:
                await self._unix.start()
            except BaseException:
                await self._server.stop(0)
                await self._unix.close()
                raise
        _log.info(
            "server.started",
            listen=self._listen,
            port=self.bound_port,
            tls=bool(self._settings.tls.cert_file),
            mutual_tls=bool(self._settings.tls.client_ca_file),
            unix_socket=self._settings.unix_socket,
        )

    async def _labels_of(self, name: str) -> dict[str, str] | None:
        try:
            env = await self._service.get(name)
        except errors.SchedulerError:
            return None
        return dict(env.spec.labels)

    async def ready(self) -> None:
        """Report SERVING on the health service."""
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def images_ready(self) -> None:
        """Report SERVING for ``scheduler.images``: the preload is over."""
        await self._health.set(IMAGES_HEALTH, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, end open streams, then give in-flight RPCs ``grace`` seconds."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._service.begin_shutdown()
        if self._unix is not None:
            self._unix.stop_accepting()
        await self._server.stop(grace)
        if self._unix is not None:
            await self._unix.close()

    async def wait(self) -> None:
        """Block until the server terminates."""
        await self._server.wait_for_termination()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)


def _tls_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Server credentials; with a client CA, clients must present a certificate it signed.

    Raises:
        Unavailable: a certificate, key or CA file cannot be read.
    """
    try:
        key = Path(tls.key_file).read_bytes()
        chain = Path(tls.cert_file).read_bytes()
        client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    except OSError as err:
        raise errors.Unavailable(f"server.tls: cannot read {err.filename}: {err.strerror}") from err
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
