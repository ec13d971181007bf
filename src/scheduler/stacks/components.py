"""Service templates and parameters shared by several stacks: PostgreSQL, the backend, the frontend."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import timedelta
from urllib.parse import quote

from scheduler.domain import (
    Dependency,
    DependencyCondition,
    HealthCheck,
    HealthCheckKind,
    PortSpec,
    Resources,
    RestartMode,
    RestartPolicy,
    ServiceSpec,
    VolumeMount,
)
from scheduler.stacks.stack import Derived, StackParameter, Values

MIB = 1024**2

# Health checks probe every 100 ms during their start period (so a deploy notices readiness at
# once) and every 5 s after it: a check per second per container would cost a core with a few
# dozen environments.

POSTGRES_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
"""Role and database names that need no quoting in SQL, URLs or pg_isready arguments."""

IMAGE_HINT = "an image reference like docker.io/library/postgres:15"
IMAGE_PATTERN = r"[^\s$]{1,255}"
"""Only the shape that keeps substitution safe; the full grammar is checked by validation."""


def _password_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > 100:
        return "must be at most 100 characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters"
    return None


def host_port_problem(value: str) -> str | None:
    """Check a host port parameter: a number from 0 (allocate) to 65535."""
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        return f"{value!r} is not a port number from 0 (allocate one) to 65535"
    return None


def generate_password() -> str:
    """A fresh random password, URL-safe so it survives any connection string unquoted."""
    return secrets.token_urlsafe(24)


POSTGRES_PARAMETERS = (
    StackParameter(
        "postgres_image",
        "Image of the PostgreSQL service.",
        default="docker.io/library/postgres:15",
        pattern=IMAGE_PATTERN,
        hint=IMAGE_HINT,
    ),
    StackParameter(
        "postgres_user",
        "Role created at first start and used by the application.",
        default="app",
        pattern=POSTGRES_IDENTIFIER,
        hint="a SQL identifier (letters, digits, underscores; at most 63)",
    ),
    StackParameter(
        "postgres_db",
        "Database created at first start.",
        default="app",
        pattern=POSTGRES_IDENTIFIER,
        hint="a SQL identifier (letters, digits, underscores; at most 63)",
    ),
    StackParameter(
        "postgres_password",
        "Password of the role; generated per environment when not given.",
        secret=True,
        generate=generate_password,
        check=_password_problem,
    ),
)


def _database_url(values: Values) -> str:
    user = quote(values["postgres_user"], safe="")
    password = quote(values["postgres_password"], safe="")
    db = quote(values["postgres_db"], safe="")
    return f"postgres://{user}:{password}@postgres:5432/{db}"


DATABASE_URL = Derived("database_url", _database_url, secret=True)

POSTGRES = ServiceSpec(
    name="postgres",
    image="${postgres_image}",
    env={
        "POSTGRES_USER": "${postgres_user}",
        "POSTGRES_PASSWORD": "${postgres_password}",
        "POSTGRES_DB": "${postgres_db}",
    },
    ports=(PortSpec(5432),),
    volumes=(VolumeMount("pgdata", "/var/lib/postgresql/data"),),
    resources=Resources(memory_bytes=1024 * MIB, pids=1024),
    # Ready when the server accepts TCP connections. The image's first-start initialisation runs a
    # temporary server on the unix socket only, so a TCP connect cannot pass before the real server
    # listens. A TCP probe costs the host a connect; `pg_isready` through exec costs a runc exec
    # (about 60 ms of CPU), which at start-up cadence across many environments starves initdb itself.
    health=HealthCheck(
        kind=HealthCheckKind.TCP,
        port=5432,
        interval=timedelta(seconds=5),
        timeout=timedelta(seconds=5),
        retries=5,
        start_period=timedelta(seconds=60),
    ),
    restart=RestartPolicy(mode=RestartMode.ON_FAILURE),
    stateful=True,
    # The image stops on SIGINT (fast shutdown); checkpointing a busy database takes a while.
    stop_grace=timedelta(seconds=30),
)

BACKEND_IMAGE = StackParameter(
    "backend_image",
    "Image of the backend API service.",
    default="docker.io/schedulerdemo/backend:1.0",
    pattern=IMAGE_PATTERN,
    hint=IMAGE_HINT,
)


def backend(*, publish: bool) -> ServiceSpec:
    """The backend API: talks to ``postgres``, serves HTTP on 8080 with ``/health``."""
    return ServiceSpec(
        name="backend",
        image="${backend_image}",
        env={
            "DATABASE_URL": "${database_url}",
            "PGHOST": "postgres",
            "PGPORT": "5432",
            "PGUSER": "${postgres_user}",
            "PGPASSWORD": "${postgres_password}",
            "PGDATABASE": "${postgres_db}",
            "PORT": "8080",
        },
        ports=(PortSpec(8080, publish=publish),),
        resources=Resources(memory_bytes=512 * MIB, pids=512),
        health=HealthCheck(
            kind=HealthCheckKind.HTTP,
            port=8080,
            path="/health",
            interval=timedelta(seconds=5),
            timeout=timedelta(seconds=2),
            retries=3,
            start_period=timedelta(seconds=10),
        ),
        restart=RestartPolicy(mode=RestartMode.ALWAYS),
        depends_on=(Dependency("postgres", DependencyCondition.HEALTHY, deadline=timedelta(seconds=120)),),
    )


FRONTEND_IMAGE = StackParameter(
    "frontend_image",
    "Image of the web frontend.",
    default="docker.io/schedulerdemo/frontend:1.0",
    pattern=IMAGE_PATTERN,
    hint=IMAGE_HINT,
)

FRONTEND_HOST_PORT = StackParameter(
    "frontend_host_port",
    "Host port of the frontend; 0 allocates one from the configured range.",
    default="0",
    check=host_port_problem,
)

FRONTEND = ServiceSpec(
    name="frontend",
    image="${frontend_image}",
    env={"BACKEND_URL": "http://backend:8080"},
    ports=(PortSpec(80, publish=True),),
    resources=Resources(memory_bytes=256 * MIB, pids=256),
    health=HealthCheck(
        kind=HealthCheckKind.HTTP,
        port=80,
        path="/healthz",
        interval=timedelta(seconds=5),
        timeout=timedelta(seconds=2),
        retries=3,
        start_period=timedelta(seconds=10),
    ),
    restart=RestartPolicy(mode=RestartMode.ALWAYS),
    depends_on=(Dependency("backend", DependencyCondition.HEALTHY, deadline=timedelta(seconds=60)),),
)


def with_host_port(
    services: tuple[ServiceSpec, ...], service: str, container_port: int, host_port: int
) -> tuple[ServiceSpec, ...]:
    """Set the host port of one published port of one service."""

    def fix(spec: ServiceSpec) -> ServiceSpec:
        if spec.name != service:
            return spec
        ports = tuple(
            dataclasses.replace(p, host_port=host_port) if p.container_port == container_port else p for p in spec.ports
        )
        return dataclasses.replace(spec, ports=ports)

    return tuple(fix(s) for s in services)
