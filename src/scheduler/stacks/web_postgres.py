"""``web-postgres``: a web frontend, a backend API and PostgreSQL with a persistent volume."""

from __future__ import annotations

from scheduler.domain import ServiceSpec
from scheduler.stacks.components import (
    BACKEND_IMAGE,
    DATABASE_URL,
    FRONTEND,
    FRONTEND_HOST_PORT,
    FRONTEND_IMAGE,
    POSTGRES,
    POSTGRES_PARAMETERS,
    backend,
    with_host_port,
)
from scheduler.stacks.stack import Stack, Values


def _finalize(services: tuple[ServiceSpec, ...], values: Values) -> tuple[ServiceSpec, ...]:
    return with_host_port(services, "frontend", 80, int(values["frontend_host_port"]))


STACK = Stack(
    name="web-postgres",
    description="Web frontend (published on the host) -> backend API -> PostgreSQL 15 with a data volume.",
    services=(POSTGRES, backend(publish=False), FRONTEND),
    parameters=(*POSTGRES_PARAMETERS, BACKEND_IMAGE, FRONTEND_IMAGE, FRONTEND_HOST_PORT),
    derived=(DATABASE_URL,),
    finalize=_finalize,
)
