"""Environment specifications, proto to domain (with field violations) and back."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from google.protobuf.message import Message

from scheduler import bounds, domain
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api.convert.scalars import (
    CONDITION_FROM,
    CONDITION_TO,
    PROTOCOL_FROM,
    PROTOCOL_TO,
    RESTART_FROM,
    RESTART_TO,
    duration_from_proto,
    duration_to_proto,
)
from scheduler.errors import FieldViolation, InvalidArgument

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
        protocol=PROTOCOL_FROM.get(port.protocol, domain.PortProtocol.TCP),
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
        cpu_request_millis=res.cpu_request_millis,
        memory_request_bytes=res.memory_request_bytes,
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
    mode = RESTART_FROM.get(policy.mode)
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
        condition=CONDITION_FROM.get(dep.condition, domain.DependencyCondition.STARTED),
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
        out.ttl.CopyFrom(duration_to_proto(request.ttl))
    if request.sleep_after_idle is not None:
        out.sleep_after_idle.CopyFrom(duration_to_proto(request.sleep_after_idle))
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
        protocol=PROTOCOL_TO[port.protocol],
    )


def _resources_to_proto(res: domain.Resources) -> pb.Resources:
    return pb.Resources(
        cpu_millis=res.cpu_millis,
        cpu_shares=res.cpu_shares,
        memory_bytes=res.memory_bytes,
        pids=res.pids,
        disk_bytes=res.disk_bytes,
        cpu_request_millis=res.cpu_request_millis,
        memory_request_bytes=res.memory_request_bytes,
    )


def _health_to_proto(check: domain.HealthCheck) -> pb.HealthCheck:
    out = pb.HealthCheck(
        interval=duration_to_proto(check.interval),
        timeout=duration_to_proto(check.timeout),
        retries=check.retries,
        start_period=duration_to_proto(check.start_period),
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
        mode=RESTART_TO[policy.mode],
        max_retries=policy.max_retries,
        initial_backoff=duration_to_proto(policy.initial_backoff),
        max_backoff=duration_to_proto(policy.max_backoff),
        reset_after=duration_to_proto(policy.reset_after),
    )


def _restart_override_to_proto(o: domain.RestartOverride) -> pb.RestartPolicy:
    out = pb.RestartPolicy(mode=RESTART_TO[o.mode] if o.mode is not None else pb.RESTART_MODE_UNSPECIFIED)
    if o.max_retries is not None:
        out.max_retries = o.max_retries
    for name in ("initial_backoff", "max_backoff", "reset_after"):
        value = getattr(o, name)
        if value is not None:
            getattr(out, name).CopyFrom(duration_to_proto(value))
    return out


def _dependency_to_proto(dep: domain.Dependency) -> pb.Dependency:
    return pb.Dependency(
        service=dep.service, condition=CONDITION_TO[dep.condition], deadline=duration_to_proto(dep.deadline)
    )
