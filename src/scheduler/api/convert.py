"""All conversion between the scheduler's proto messages and domain types.

One of the two wire edges (the other is ``runtime/containerd/convert.py``). Functions are
``x_to_proto`` / ``x_from_proto``; nothing else in the code base touches ``scheduler_pb2``
except the thin servicer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from scheduler import bounds, domain
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.errors import FieldViolation, InvalidArgument
from scheduler.stacks.stack import Stack

# --- scalars ------------------------------------------------------------------------------------


_MAX_DURATION_SECONDS = int(bounds.MAX_DURATION.total_seconds())
_LATEST_TIMESTAMP = 253402300799
"""9999-12-31T23:59:59Z, the last second a timestamp (and a Python datetime) can hold."""


def duration_from_proto(value: duration_pb2.Duration, field: str = "duration") -> timedelta:
    """Convert a protobuf duration to a timedelta.

    Raises:
        InvalidArgument: naming ``field`` when the duration is longer than any bound the API has.
    """
    if abs(value.seconds) > _MAX_DURATION_SECONDS or abs(value.nanos) > 999_999_999:
        raise InvalidArgument.of([FieldViolation(field, f"must be at most {bounds.MAX_DURATION.days} days")])
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def _duration_to_proto(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def _time_to_proto(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    return out


def time_from_proto(value: timestamp_pb2.Timestamp, field: str = "time") -> datetime:
    """Convert a protobuf timestamp to an aware UTC datetime.

    Raises:
        InvalidArgument: naming ``field`` when the time is before 1970 or after year 9999.
    """
    if not 0 <= value.seconds <= _LATEST_TIMESTAMP or not 0 <= value.nanos <= 999_999_999:
        raise InvalidArgument.of([FieldViolation(field, "must be a time from 1970 to the year 9999")])
    return value.ToDatetime().replace(tzinfo=UTC)


_PROTOCOL_FROM = {
    pb.PORT_PROTOCOL_UNSPECIFIED: domain.PortProtocol.TCP,
    pb.PORT_PROTOCOL_TCP: domain.PortProtocol.TCP,
    pb.PORT_PROTOCOL_UDP: domain.PortProtocol.UDP,
}
_PROTOCOL_TO = {domain.PortProtocol.TCP: pb.PORT_PROTOCOL_TCP, domain.PortProtocol.UDP: pb.PORT_PROTOCOL_UDP}

_RESTART_FROM = {
    pb.RESTART_MODE_NO: domain.RestartMode.NO,
    pb.RESTART_MODE_ON_FAILURE: domain.RestartMode.ON_FAILURE,
    pb.RESTART_MODE_ALWAYS: domain.RestartMode.ALWAYS,
    pb.RESTART_MODE_UNLESS_STOPPED: domain.RestartMode.UNLESS_STOPPED,
}
_RESTART_TO = {v: k for k, v in _RESTART_FROM.items()}

_CONDITION_FROM = {
    pb.DEPENDENCY_CONDITION_UNSPECIFIED: domain.DependencyCondition.STARTED,
    pb.DEPENDENCY_CONDITION_STARTED: domain.DependencyCondition.STARTED,
    pb.DEPENDENCY_CONDITION_HEALTHY: domain.DependencyCondition.HEALTHY,
    pb.DEPENDENCY_CONDITION_COMPLETED: domain.DependencyCondition.COMPLETED,
}
_CONDITION_TO = {
    domain.DependencyCondition.STARTED: pb.DEPENDENCY_CONDITION_STARTED,
    domain.DependencyCondition.HEALTHY: pb.DEPENDENCY_CONDITION_HEALTHY,
    domain.DependencyCondition.COMPLETED: pb.DEPENDENCY_CONDITION_COMPLETED,
}

_ENV_STATUS_TO = {
    status: pb.EnvironmentStatus.Value(f"ENVIRONMENT_STATUS_{status.value}") for status in domain.EnvironmentStatus
}
_ENV_STATUS_FROM = {v: k for k, v in _ENV_STATUS_TO.items()}
_CONTAINER_STATE_TO = {
    state: pb.ContainerState.Value(f"CONTAINER_STATE_{state.value}") for state in domain.ContainerState
}
_HEALTH_TO = {
    domain.Health.UNKNOWN: pb.HEALTH_STATUS_UNKNOWN,
    domain.Health.STARTING: pb.HEALTH_STATUS_STARTING,
    domain.Health.HEALTHY: pb.HEALTH_STATUS_HEALTHY,
    domain.Health.UNHEALTHY: pb.HEALTH_STATUS_UNHEALTHY,
    domain.Health.NONE: pb.HEALTH_STATUS_NONE,
}


# --- specification: proto -> domain -------------------------------------------------------------


def request_from_proto(spec: pb.EnvironmentSpecification, field: str = "spec") -> domain.EnvironmentRequest:
    """Convert a client's specification into a request the service can resolve and validate."""
    size = spec.ByteSize()
    if size > bounds.MAX_SPEC_BYTES:
        raise InvalidArgument.of(
            [FieldViolation(field, f"is {size} bytes encoded; at most {bounds.MAX_SPEC_BYTES} are allowed")]
        )
    violations: list[FieldViolation] = []
    services = {
        name: _override_from_proto(config, f"{field}.services.{name}", violations)
        for name, config in spec.services.items()
    }
    ttl = duration_from_proto(spec.ttl, f"{field}.ttl") if spec.HasField("ttl") else None
    if ttl is not None and ttl <= timedelta(0):
        violations.append(FieldViolation(f"{field}.ttl", "must be positive"))
    idle = None
    if spec.HasField("sleep_after_idle"):
        idle = duration_from_proto(spec.sleep_after_idle, f"{field}.sleep_after_idle")
        if idle < timedelta(0):
            violations.append(FieldViolation(f"{field}.sleep_after_idle", "must not be negative"))
    if violations:
        raise InvalidArgument.of(violations)
    return domain.EnvironmentRequest(
        stack=spec.stack,
        services=services,
        parameters=dict(spec.parameters),
        labels=dict(spec.labels),
        network=domain.NetworkSettings(subnet=spec.network.subnet, host_ip=spec.network.host_ip),
        ttl=ttl,
        sleep_after_idle=idle,
    )


def _override_from_proto(
    config: pb.ContainerConfiguration, field: str, violations: list[FieldViolation]
) -> domain.ServiceOverride:
    return domain.ServiceOverride(
        image=config.image or None,
        command=tuple(config.command) or None,
        args=tuple(config.args) or None,
        env=dict(config.env),
        ports=tuple(_port_from_proto(p) for p in config.ports) or None,
        volumes=tuple(domain.VolumeMount(v.name, v.path, v.read_only) for v in config.volumes) or None,
        resources=_resources_from_proto(config.resources) if config.HasField("resources") else None,
        health=_health_from_proto(config.health_check, f"{field}.health_check", violations)
        if config.HasField("health_check")
        else None,
        restart=_restart_from_proto(config.restart_policy, f"{field}.restart_policy", violations)
        if config.HasField("restart_policy")
        else None,
        depends_on=tuple(_dependency_from_proto(d) for d in config.depends_on) or None,
        replicas=config.replicas if config.HasField("replicas") else None,
        user=config.user if config.HasField("user") else None,
        working_dir=config.working_dir if config.HasField("working_dir") else None,
        read_only_rootfs=config.read_only_rootfs if config.HasField("read_only_rootfs") else None,
        security=_security_from_proto(config.security) if config.HasField("security") else None,
    )


def _security_from_proto(security: pb.SecurityOptions) -> domain.Security:
    return domain.Security(cap_add=tuple(security.cap_add), cap_drop=tuple(security.cap_drop), seccomp=security.seccomp)


def _security_to_proto(security: domain.Security) -> pb.SecurityOptions:
    return pb.SecurityOptions(
        cap_add=list(security.cap_add), cap_drop=list(security.cap_drop), seccomp=security.seccomp
    )


def _port_from_proto(port: pb.PortMapping) -> domain.PortSpec:
    return domain.PortSpec(
        container_port=port.container_port,
        protocol=_PROTOCOL_FROM.get(port.protocol, domain.PortProtocol.TCP),
        publish=port.publish,
        host_port=port.host_port,
        host_ip=port.host_ip,
    )


def _resources_from_proto(res: pb.Resources) -> domain.Resources:
    return domain.Resources(
        cpu_millis=res.cpu_millis,
        cpu_shares=res.cpu_shares,
        memory_bytes=res.memory_bytes,
        pids=res.pids,
        disk_bytes=res.disk_bytes,
    )


def _health_from_proto(check: pb.HealthCheck, field: str, violations: list[FieldViolation]) -> domain.HealthCheck:
    defaults = domain.HealthCheck()
    timed = domain.HealthCheck(
        interval=duration_from_proto(check.interval) if check.HasField("interval") else defaults.interval,
        timeout=duration_from_proto(check.timeout) if check.HasField("timeout") else defaults.timeout,
        retries=check.retries or defaults.retries,
        start_period=duration_from_proto(check.start_period)
        if check.HasField("start_period")
        else defaults.start_period,
    )
    probe = check.WhichOneof("probe")
    if probe == "exec":
        return replace(timed, kind=domain.HealthCheckKind.EXEC, command=tuple(check.exec.command))
    if probe == "http":
        return replace(timed, kind=domain.HealthCheckKind.HTTP, port=check.http.port, path=check.http.path or "/")
    if probe == "tcp":
        return replace(timed, kind=domain.HealthCheckKind.TCP, port=check.tcp.port)
    violations.append(FieldViolation(field, "set one of exec, http or tcp"))
    return defaults


def _restart_from_proto(
    policy: pb.RestartPolicy, field: str, violations: list[FieldViolation]
) -> domain.RestartOverride:
    """Unset fields (mode UNSPECIFIED included) keep the stack's policy."""
    mode = _RESTART_FROM.get(policy.mode)
    if mode is None and policy.mode != pb.RESTART_MODE_UNSPECIFIED:
        violations.append(FieldViolation(f"{field}.mode", f"{policy.mode} is not a restart mode"))
    return domain.RestartOverride(
        mode=mode,
        max_retries=policy.max_retries if policy.HasField("max_retries") else None,
        initial_backoff=_optional_duration(policy, "initial_backoff"),
        max_backoff=_optional_duration(policy, "max_backoff"),
        reset_after=_optional_duration(policy, "reset_after"),
    )


def _optional_duration(message: Message, name: str) -> timedelta | None:
    return duration_from_proto(getattr(message, name)) if message.HasField(name) else None


def _dependency_from_proto(dep: pb.Dependency) -> domain.Dependency:
    defaults = domain.Dependency(service=dep.service)
    return domain.Dependency(
        service=dep.service,
        condition=_CONDITION_FROM.get(dep.condition, domain.DependencyCondition.STARTED),
        deadline=duration_from_proto(dep.deadline) if dep.HasField("deadline") else defaults.deadline,
    )


# --- domain -> proto ------------------------------------------------------------------------------


def request_to_proto(request: domain.EnvironmentRequest) -> pb.EnvironmentSpecification:
    """Convert a stored request back into the client's specification form."""
    out = pb.EnvironmentSpecification(
        stack=request.stack,
        services={name: _override_to_proto(o) for name, o in request.services.items()},
        parameters=dict(request.parameters),
        labels=dict(request.labels),
        network=pb.NetworkSpecification(subnet=request.network.subnet, host_ip=request.network.host_ip),
    )
    if request.ttl is not None:
        out.ttl.CopyFrom(_duration_to_proto(request.ttl))
    if request.sleep_after_idle is not None:
        out.sleep_after_idle.CopyFrom(_duration_to_proto(request.sleep_after_idle))
    return out


def _override_to_proto(o: domain.ServiceOverride) -> pb.ContainerConfiguration:
    out = pb.ContainerConfiguration(
        image=o.image or "",
        command=list(o.command or ()),
        args=list(o.args or ()),
        env=dict(o.env),
        ports=[_port_to_proto(p) for p in o.ports or ()],
        volumes=[pb.VolumeMount(name=v.name, path=v.path, read_only=v.read_only) for v in o.volumes or ()],
        depends_on=[_dependency_to_proto(d) for d in o.depends_on or ()],
    )
    if o.resources is not None:
        out.resources.CopyFrom(_resources_to_proto(o.resources))
    if o.health is not None:
        out.health_check.CopyFrom(_health_to_proto(o.health))
    if o.restart is not None:
        out.restart_policy.CopyFrom(_restart_override_to_proto(o.restart))
    if o.replicas is not None:
        out.replicas = o.replicas
    if o.user is not None:
        out.user = o.user
    if o.working_dir is not None:
        out.working_dir = o.working_dir
    if o.read_only_rootfs is not None:
        out.read_only_rootfs = o.read_only_rootfs
    if o.security is not None:
        out.security.CopyFrom(_security_to_proto(o.security))
    return out


def service_to_proto(service: domain.ServiceSpec) -> pb.ServiceDescription:
    """Convert a resolved service; the caller has already redacted secrets."""
    config = pb.ContainerConfiguration(
        image=service.image,
        command=list(service.command),
        args=list(service.args),
        env=dict(service.env),
        ports=[_port_to_proto(p) for p in service.ports],
        volumes=[pb.VolumeMount(name=v.name, path=v.path, read_only=v.read_only) for v in service.volumes],
        resources=_resources_to_proto(service.resources),
        restart_policy=_restart_to_proto(service.restart),
        depends_on=[_dependency_to_proto(d) for d in service.depends_on],
        replicas=service.replicas,
        user=service.user,
        working_dir=service.working_dir,
        read_only_rootfs=service.read_only_rootfs,
        security=_security_to_proto(service.security),
    )
    if service.health.kind is not domain.HealthCheckKind.NONE:
        config.health_check.CopyFrom(_health_to_proto(service.health))
    return pb.ServiceDescription(name=service.name, config=config)


def _port_to_proto(port: domain.PortSpec) -> pb.PortMapping:
    return pb.PortMapping(
        container_port=port.container_port,
        publish=port.publish,
        host_port=port.host_port,
        host_ip=port.host_ip,
        protocol=_PROTOCOL_TO[port.protocol],
    )


def _resources_to_proto(res: domain.Resources) -> pb.Resources:
    return pb.Resources(
        cpu_millis=res.cpu_millis,
        cpu_shares=res.cpu_shares,
        memory_bytes=res.memory_bytes,
        pids=res.pids,
        disk_bytes=res.disk_bytes,
    )


def _health_to_proto(check: domain.HealthCheck) -> pb.HealthCheck:
    out = pb.HealthCheck(
        interval=_duration_to_proto(check.interval),
        timeout=_duration_to_proto(check.timeout),
        retries=check.retries,
        start_period=_duration_to_proto(check.start_period),
    )
    if check.kind is domain.HealthCheckKind.EXEC:
        out.exec.command.extend(check.command)
    elif check.kind is domain.HealthCheckKind.HTTP:
        out.http.port = check.port
        out.http.path = check.path
    elif check.kind is domain.HealthCheckKind.TCP:
        out.tcp.port = check.port
    return out


def _restart_to_proto(policy: domain.RestartPolicy) -> pb.RestartPolicy:
    return pb.RestartPolicy(
        mode=_RESTART_TO[policy.mode],
        max_retries=policy.max_retries,
        initial_backoff=_duration_to_proto(policy.initial_backoff),
        max_backoff=_duration_to_proto(policy.max_backoff),
        reset_after=_duration_to_proto(policy.reset_after),
    )


def _restart_override_to_proto(o: domain.RestartOverride) -> pb.RestartPolicy:
    out = pb.RestartPolicy(mode=_RESTART_TO[o.mode] if o.mode is not None else pb.RESTART_MODE_UNSPECIFIED)
    if o.max_retries is not None:
        out.max_retries = o.max_retries
    for name in ("initial_backoff", "max_backoff", "reset_after"):
        value = getattr(o, name)
        if value is not None:
            getattr(out, name).CopyFrom(_duration_to_proto(value))
    return out


def _dependency_to_proto(dep: domain.Dependency) -> pb.Dependency:
    return pb.Dependency(
        service=dep.service, condition=_CONDITION_TO[dep.condition], deadline=_duration_to_proto(dep.deadline)
    )


def environment_to_proto(env: domain.Environment) -> pb.Environment:
    """Convert an environment (already redacted by the service layer) to its wire form."""
    out = pb.Environment(
        name=env.name,
        uid=env.uid,
        etag=domain.etag(env),
        generation=env.generation,
        observed_generation=env.observed_generation,
        status=_ENV_STATUS_TO[env.status],
        containers=[_container_to_proto(c) for c in env.containers],
        endpoints=[
            pb.Endpoint(
                service=e.service,
                host_ip=e.host_ip,
                host_port=e.host_port,
                container_port=e.container_port,
                protocol=_PROTOCOL_TO[e.protocol],
            )
            for e in env.endpoints
        ],
        conditions=[_condition_to_proto(c) for c in env.conditions],
        services=[service_to_proto(s) for s in env.spec.services],
    )
    if env.request is not None:
        out.spec.CopyFrom(request_to_proto(env.request))
    else:
        out.spec.stack = env.spec.stack
    _set_time(out.create_time, env.created_at)
    _set_time(out.update_time, env.updated_at)
    _set_time(out.expire_time, domain.expire_time(env))
    return out


def _container_to_proto(c: domain.ContainerStatus) -> pb.ContainerStatus:
    out = pb.ContainerStatus(
        service=c.service,
        replica=c.replica,
        container_id=c.container_id,
        state=_CONTAINER_STATE_TO[c.state],
        health=_HEALTH_TO[c.health],
        restart_count=c.restart_count,
        pid=c.pid,
        ip=c.ip,
        message=c.message,
        oom_killed=c.oom_killed,
    )
    if c.exit_code is not None:
        out.exit_code = c.exit_code
    _set_time(out.start_time, c.started_at)
    _set_time(out.end_time, c.finished_at)
    return out


def _condition_to_proto(c: domain.Condition) -> pb.Condition:
    out = pb.Condition(
        type=c.type,
        status=pb.CONDITION_STATUS_TRUE if c.status else pb.CONDITION_STATUS_FALSE,
        reason=c.reason,
        message=c.message,
        service=c.service,
    )
    _set_time(out.last_transition_time, c.last_transition)
    return out


def _set_time(target: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    converted = _time_to_proto(value)
    if converted is not None:
        target.CopyFrom(converted)


def history_to_proto(entries: Iterable[domain.HistoryEntry], next_page_token: str) -> pb.GetEnvironmentHistoryResponse:
    """Convert a page of the audit trail."""
    out = pb.GetEnvironmentHistoryResponse(next_page_token=next_page_token)
    for entry in entries:
        item = out.entries.add(generation=entry.generation, actor=entry.actor, action=entry.action, detail=entry.detail)
        _set_time(item.time, entry.at)
    return out


def backup_to_proto(info: domain.BackupInfo) -> pb.Backup:
    """Convert a description of one archive."""
    out = pb.Backup(
        id=info.id,
        environment=info.environment,
        size_bytes=info.size_bytes,
        volumes=info.volumes,
        databases=info.databases,
    )
    _set_time(out.create_time, info.created_at)
    return out


def operation_to_proto(record: domain.OperationRecord) -> pb.Operation:
    """Convert the timeline of one operation."""
    out = pb.Operation(id=record.id, kind=record.operation, outcome=record.outcome, dropped_steps=record.dropped_steps)
    _set_time(out.start_time, record.started_at)
    _set_time(out.end_time, record.finished_at)
    for step in record.steps:
        item = out.steps.add(step=step.step, service=step.service, detail=step.detail)
        _set_time(item.time, step.at)
    return out


def stack_to_proto(stack: Stack) -> pb.Stack:
    """Convert a catalogue entry: its service templates and its parameters."""
    return pb.Stack(
        name=stack.name,
        description=stack.description,
        services=[service_to_proto(s) for s in stack.services],
        parameters=[
            pb.StackParameter(
                name=p.name,
                description=p.description,
                default_value="" if p.secret or p.default is None else p.default,
                secret=p.secret,
            )
            for p in stack.parameters
        ],
    )


def change_to_proto(change: domain.ServiceChange) -> pb.ServiceChange:
    """Convert one line of an update plan."""
    return pb.ServiceChange(
        service=change.service,
        action=pb.ChangeAction.Value(f"CHANGE_ACTION_{change.action.value}"),
        reason=change.reason,
    )


_LOG_STREAM_TO = {
    domain.LogStream.STDOUT: pb.LOG_STREAM_STDOUT,
    domain.LogStream.STDERR: pb.LOG_STREAM_STDERR,
}


def log_stream_from_proto(value: int) -> domain.LogStream | None:
    """Convert a stream filter; UNSPECIFIED means both streams."""
    if value == pb.LOG_STREAM_UNSPECIFIED:
        return None
    for stream, number in _LOG_STREAM_TO.items():
        if number == value:
            return stream
    raise InvalidArgument.of([FieldViolation("stream", f"{value} is not a log stream")])


def log_line_to_proto(line: domain.LogLine) -> pb.LogLine:
    """Convert one log line."""
    out = pb.LogLine(
        service=line.service,
        replica=line.replica,
        stream=_LOG_STREAM_TO[line.stream],
        line=line.line,
        container_id=line.container_id,
    )
    _set_time(out.time, line.at)
    return out


def metrics_to_proto(name: str, samples: Iterable[domain.ContainerSample]) -> pb.EnvironmentMetrics:
    """Convert a metrics sample of every container of an environment."""
    out = pb.EnvironmentMetrics(name=name)
    for sample in samples:
        m = sample.metrics
        item = out.containers.add(
            service=sample.service,
            replica=sample.replica,
            container_id=m.container_id,
            cpu_usage_ns=m.cpu_usage_ns,
            cpu_cores=sample.cpu_cores,
            memory_usage_bytes=m.memory_usage_bytes,
            memory_limit_bytes=m.memory_limit_bytes,
            pids_current=m.pids_current,
            pids_limit=m.pids_limit,
            io_read_bytes=m.io_read_bytes,
            io_write_bytes=m.io_write_bytes,
        )
        _set_time(item.time, m.at)
    return out


def event_to_proto(event: domain.Event) -> pb.Event:
    """Convert one event."""
    out = pb.Event(
        type=pb.EventType.Value(f"EVENT_TYPE_{event.type.value}"),
        environment=event.environment,
        service=event.service,
        replica=event.replica,
        container_id=event.container_id,
        message=event.message,
        generation=event.generation,
        sequence=event.sequence,
    )
    _set_time(out.time, event.at)
    return out
