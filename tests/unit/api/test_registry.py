"""Handlers reach grpc wrapped, through one generic handler, never as grpc registered methods."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc
from scheduler.api.interceptors import RequestInterceptor
from scheduler.api.registry import WrappingRegistry


class _RecordingServer:
    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_registered_methods_are_served_wrapped_from_one_generic_handler() -> None:
    server = _RecordingServer()
    registry: Any = WrappingRegistry(server, RequestInterceptor())  # type: ignore[arg-type]
    servicer = scheduler_pb2_grpc.SchedulerServiceServicer()
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, registry)
    # grpc.aio waits on a future per registered method for every call: none may reach it.
    assert server.registered == []
    first = server.generic[0]
    handler = first.service(_Details("/scheduler.v1.SchedulerService/GetEnvironment"))
    assert handler is not None and handler.unary_unary is not None
    assert handler.unary_unary.__qualname__.startswith("_wrap_unary")  # wrapped, not the servicer's own
    assert first.service(_Details("/scheduler.v1.SchedulerService/NoSuchMethod")) is None
    assert first.service(_Details("/other.Service/GetEnvironment")) is None


async def test_a_real_server_answers_through_the_registry() -> None:
    server = grpc.aio.server()
    registry: Any = WrappingRegistry(server, RequestInterceptor())
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, registry)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            call = channel.unary_unary("/grpc.health.v1.Health/NoSuchMethod")
            try:
                await call(b"", timeout=10)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            else:
                raise AssertionError("an unknown method was answered")
    finally:
        await server.stop(0)
