"""How the services' handlers reach the grpc server: each wrapped once, as it registers.

The wrapping is :class:`~scheduler.api.interceptors.RequestInterceptor`'s (request id, access
log, gate, errors), without grpc's interceptor chain, which costs a few coroutines and a handler
lookup on every call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from scheduler.api.interceptors import RequestInterceptor


class WrappingRegistry:
    """Stands for the grpc server while services register: each handler is wrapped once, there.

    Every method a service registers is served from one generic handler (a dict lookup by
    method name), not as a grpc "registered method": grpc.aio's server waits for the next call
    of each registered method on a future of its own and passes all of them to ``asyncio.wait``
    for every call it accepts, which cost more per call than everything the daemon does for a
    GetEnvironment.
    """

    def __init__(self, server: grpc.aio.Server, requests: RequestInterceptor) -> None:
        self._server = server
        self._requests = requests
        self._methods = _Methods()
        server.add_generic_rpc_handlers((self._methods,))  # first: asked before any generic handler below

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Register generic handlers, each answering with wrapped method handlers."""
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self._requests) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Serve a service's method handlers, wrapped, by their full method names."""
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._methods.handlers[method] = self._requests.wrap(method, handler)


class _Methods(grpc.GenericRpcHandler):
    """Wrapped method handlers by full method name (``/pkg.Service/Method``)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self.handlers.get(handler_call_details.method)


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, requests: RequestInterceptor) -> None:
        self._inner = inner
        self._requests = requests

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._requests.wrap(handler_call_details.method, handler)
