"""``api-postgres``: a backend API published on the host, and PostgreSQL with a persistent volume."""

from __future__ import annotations

from scheduler.domain import ServiceSpec
from scheduler.stacks.components import (
    BACKEND_IMAGE,
    DATABASE_URL,
    POSTGRES,
    POSTGRES_PARAMETERS,
    backend,
    host_port_problem,
    with_host_port,
)
from scheduler.stacks.stack import Stack, StackParameter, Values

BACKEND_HOST_PORT = StackParameter(
    "backend_host_port",
    "Host port of the backend; 0 allocates one from the configured range.",
    default="0",
    check=host_port_problem,
)


def _finalize(services: tuple[ServiceSpec, ...], values: Values) -> tuple[ServiceSpec, ...]:
    return with_host_port(services, "backend", 8080, int(values["backend_host_port"]))


STACK = Stack(
    name="api-postgres",
    description="Backend API (published on the host) -> PostgreSQL 15 with a data volume.",
    services=(POSTGRES, backend(publish=True)),
    parameters=(*POSTGRES_PARAMETERS, BACKEND_IMAGE, BACKEND_HOST_PORT),
    derived=(DATABASE_URL,),
    finalize=_finalize,
)
