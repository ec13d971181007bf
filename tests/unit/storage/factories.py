"""Domain values with every field set, for store and codec tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from scheduler.domain import (
    Condition,
    ContainerState,
    ContainerStatus,
    Dependency,
    DependencyCondition,
    Endpoint,
    Environment,
    EnvironmentRequest,
    EnvironmentSpec,
    EnvironmentStatus,
    Health,
    HealthCheck,
    HealthCheckKind,
    HistoryEntry,
    NetworkSettings,
    PortProtocol,
    PortSpec,
    Resources,
    RestartMode,
    RestartOverride,
    RestartPolicy,
    Security,
    ServiceOverride,
    ServiceSpec,
    SleepRequest,
    VolumeMount,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def full_service(name: str = "backend") -> ServiceSpec:
    return ServiceSpec(
        name=name,
        image="docker.io/library/postgres:15",
        command=("/bin/sh", "-c"),
        args=("echo hi", "x y"),
        env={"A": "1", "PASSWORD": "s3cr=t"},
        ports=(
            PortSpec(8080, PortProtocol.TCP, publish=True, host_port=20001, host_ip="127.0.0.1"),
            PortSpec(53, PortProtocol.UDP),
        ),
        volumes=(VolumeMount("data", "/data", read_only=True),),
        resources=Resources(
            cpu_millis=1500,
            cpu_shares=512,
            memory_bytes=2**30,
            pids=100,
            disk_bytes=5,
            cpu_request_millis=250,
            memory_request_bytes=2**29,
        ),
        health=HealthCheck(
            kind=HealthCheckKind.HTTP,
            command=("true",),
            port=8080,
            path="/health",
            interval=timedelta(milliseconds=1500),
            timeout=timedelta(seconds=2, microseconds=7),
            retries=4,
            start_period=timedelta(seconds=30),
        ),
        restart=RestartPolicy(
            mode=RestartMode.ON_FAILURE,
            max_retries=3,
            initial_backoff=timedelta(milliseconds=250),
            max_backoff=timedelta(minutes=1),
            reset_after=timedelta(seconds=15),
        ),
        depends_on=(Dependency("postgres", DependencyCondition.HEALTHY, timedelta(seconds=90)),),
        replicas=2,
        user="999:999",
        working_dir="/srv",
        read_only_rootfs=True,
        stop_grace=timedelta(seconds=12),
        stateful=True,
        secret_env=frozenset({"PASSWORD", "A"}),
        security=Security(cap_add=("NET_RAW",), cap_drop=("KILL",), seccomp="unconfined"),
    )


def full_environment(
    name: str = "demo",
    *,
    status: EnvironmentStatus = EnvironmentStatus.RUNNING,
    labels: dict[str, str] | None = None,
    request_id: str = "",
) -> Environment:
    return Environment(
        name=name,
        uid=uuid.uuid4().hex,
        spec=EnvironmentSpec(
            stack="web-postgres",
            services=(full_service("backend"), ServiceSpec(name="postgres", image="postgres:15")),
            labels={"team": "a", "tier": "dev"} if labels is None else labels,
            network=NetworkSettings(subnet="10.88.3.0/24", host_ip="127.0.0.2"),
            ttl=timedelta(hours=2),
            sleep_after_idle=timedelta(minutes=30),
        ),
        generation=3,
        observed_generation=2,
        status=status,
        containers=(
            ContainerStatus(
                service="backend",
                replica=1,
                container_id="demo-backend-1",
                state=ContainerState.RUNNING,
                health=Health.HEALTHY,
                exit_code=137,
                restart_count=2,
                pid=4242,
                ip="10.88.3.5",
                started_at=T0,
                finished_at=datetime(2026, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2))),
                message="ok",
                oom_killed=True,
            ),
        ),
        endpoints=(Endpoint("frontend", "127.0.0.1", 20002, 80, PortProtocol.TCP),),
        conditions=(Condition("Ready", True, "AllHealthy", "all good", "backend", T0),),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        request_id=request_id,
        revision=1,
        node="node-1",
        keep_volumes=True,
        requested=SleepRequest("stop", "stopped by alice"),
        request=full_request(),
    )


def full_override() -> ServiceOverride:
    service = full_service()
    return ServiceOverride(
        image="docker.io/library/nginx:1.25",
        command=("nginx",),
        args=("-g", "daemon off;"),
        env={"X": "y"},
        ports=service.ports,
        volumes=service.volumes,
        resources=service.resources,
        health=service.health,
        restart=RestartOverride(mode=RestartMode.ALWAYS, max_retries=4, reset_after=timedelta(seconds=3)),
        depends_on=service.depends_on,
        replicas=3,
        user="101",
        working_dir="/",
        read_only_rootfs=False,
        security=Security(cap_drop=("ALL",)),
    )


def full_request() -> EnvironmentRequest:
    return EnvironmentRequest(
        stack="web-postgres",
        services={"frontend": full_override(), "backend": ServiceOverride(replicas=2)},
        parameters={"postgres_db": "shop", "postgres_password": "hunter2"},
        labels={"team": "a"},
        network=NetworkSettings(subnet="10.88.9.0/24"),
        ttl=timedelta(minutes=5),
        sleep_after_idle=timedelta(minutes=10),
    )


def history_entry(env: str = "demo", generation: int = 1, action: str = "create") -> HistoryEntry:
    return HistoryEntry(env=env, generation=generation, at=T0, actor="alice", action=action, detail="d")
