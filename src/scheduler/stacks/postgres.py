"""``postgres``: PostgreSQL alone, published on the host, with a persistent volume."""

from __future__ import annotations

import dataclasses

from scheduler.domain import PortSpec, ServiceSpec
from scheduler.stacks.components import (
    POSTGRES,
    POSTGRES_PARAMETERS,
    host_port_problem,
    with_host_port,
)
from scheduler.stacks.stack import Stack, StackParameter, Values

POSTGRES_HOST_PORT = StackParameter(
    "postgres_host_port",
    "Host port of the database; 0 allocates one from the configured range.",
    default="0",
    check=host_port_problem,
)


def _finalize(services: tuple[ServiceSpec, ...], values: Values) -> tuple[ServiceSpec, ...]:
    return with_host_port(services, "postgres", 5432, int(values["postgres_host_port"]))


STACK = Stack(
    name="postgres",
    description="PostgreSQL 15 alone, published on the host, with a data volume.",
    services=(dataclasses.replace(POSTGRES, ports=(PortSpec(5432, publish=True),)),),
    parameters=(*POSTGRES_PARAMETERS, POSTGRES_HOST_PORT),
    finalize=_finalize,
)
