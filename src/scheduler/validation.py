"""Structural checks of a resolved ``EnvironmentSpec``, reporting every bad field at once.

Names are bounded so that everything derived from them fits its own limit: a container id
``<env>-<service>-<replica>`` must stay within containerd's 76 characters, hence at most 40
characters for an environment and 32 for a service.

One table of checks a little over 400 lines: each ``_check_*`` covers one part of the spec,
and all of them must run together so every bad field is reported at once.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta

from scheduler import reference
from scheduler.bounds import MAX_ENV_VALUE, MAX_PORTS, MAX_PUBLISHED_PORTS, clip
from scheduler.config import LimitSettings
from scheduler.domain import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    SECCOMP_UNCONFINED,
    EnvironmentSpec,
    HealthCheck,
    HealthCheckKind,
    Resources,
    RestartMode,
    RestartPolicy,
    Security,
    ServiceSpec,
    capability_name,
)
from scheduler.errors import FieldViolation, InvalidArgument
from scheduler.stacks.graph import find_cycle

MAX_ENV_NAME = 40
MAX_SERVICE_NAME = 32
MAX_VOLUME_NAME = 63
MAX_LABEL_KEY = 253
MAX_LABEL_VALUE = 1024
MIN_MEMORY_BYTES = 6 * 1024**2
"""runc refuses memory limits below about 6 MiB; fail at validation rather than at start."""

DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
"""RFC 1123 label, lowercase: usable as a hostname, a container id part and a directory name."""
VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def image_reference_problem(ref: str) -> str | None:
    """Say what is wrong with an image reference (the runtime's own grammar), or None when it parses."""
    if not ref:
        return "must not be empty"
    return reference.problem(ref)


def env_name_problem(name: str) -> str | None:
    """Say what is wrong with an environment name, or return None."""
    return _dns_label_problem(name, MAX_ENV_NAME)


def volume_name_problem(name: str) -> str | None:
    """Say what is wrong with a volume name, or return None."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_VOLUME_NAME:
        return f"must be at most {MAX_VOLUME_NAME} characters, got {len(name)}"
    if not VOLUME_NAME.fullmatch(name):
        return f"{clip(name)!r} must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def _dns_label_problem(name: str, limit: int) -> str | None:
    if not name:
        return "must not be empty"
    if len(name) > limit:
        return f"must be at most {limit} characters, got {len(name)}"
    if not DNS_LABEL.fullmatch(name):
        return f"{clip(name)!r} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
    return None


def validate(name: str, spec: EnvironmentSpec, limits: LimitSettings) -> None:
    """Check an environment name and its resolved spec.

    Raises:
        InvalidArgument: listing every violation, each naming its field path
            (``name``, ``spec.services.backend.ports[0].container_port``...).
    """
    violations = violations_of(name, spec, limits)
    if violations:
        raise InvalidArgument.of(violations)


def violations_of(name: str, spec: EnvironmentSpec, limits: LimitSettings) -> list[FieldViolation]:
    """Every violation of ``validate``, as a list (empty when the spec is fine)."""
    out: list[FieldViolation] = []
    problem = env_name_problem(name)
    if problem:
        out.append(FieldViolation("name", problem))
    if not spec.stack:
        out.append(FieldViolation("spec.stack", "must not be empty"))
    _check_labels(spec.labels, "spec.labels", out)
    _check_network(spec, out)
    if spec.ttl is not None and spec.ttl <= timedelta(0):
        out.append(FieldViolation("spec.ttl", "must be positive when set"))
    if not spec.services:
        out.append(FieldViolation("spec.services", "must hold at least one service"))
    counts = Counter(s.name for s in spec.services)
    for i, service in enumerate(spec.services):
        where = f"spec.services.{service.name}" if service.name else f"spec.services[{i}]"
        if counts[service.name] > 1 and service.name:
            if i == next(j for j, s in enumerate(spec.services) if s.name == service.name):
                out.append(FieldViolation(f"{where}.name", f"service {service.name!r} is declared twice"))
        _check_service(service, where, set(counts), limits, out)
    _check_host_ports(spec, out)
    published = sum(service.replicas * sum(p.publish for p in service.ports) for service in spec.services)
    if published > MAX_PUBLISHED_PORTS:
        out.append(
            FieldViolation(
                "spec.services",
                f"publish {published} host ports (replicas counted); at most {MAX_PUBLISHED_PORTS} are allowed",
            )
        )
    cycle = find_cycle(spec.services)
    if cycle is not None and len(cycle) > 2:  # a self-dependency is reported on its own field
        out.append(FieldViolation(f"spec.services.{cycle[0]}.depends_on", "dependency cycle: " + " -> ".join(cycle)))
    return out


def _check_network(spec: EnvironmentSpec, out: list[FieldViolation]) -> None:
    if spec.network.subnet:
        try:
            net = ipaddress.ip_network(spec.network.subnet, strict=True)
        except ValueError as err:
            out.append(FieldViolation("spec.network.subnet", f"is not a network in CIDR form: {err}"))
        else:
            if net.version != 4 or net.prefixlen > 29 or net.prefixlen < 16:
                out.append(FieldViolation("spec.network.subnet", "must be an IPv4 network from /16 to /29"))
    if spec.network.host_ip:
        _check_ip(spec.network.host_ip, "spec.network.host_ip", out)


def _check_ip(value: str, where: str, out: list[FieldViolation]) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        out.append(FieldViolation(where, f"{value!r} is not an IP address"))


def _check_labels(labels: Mapping[str, str], where: str, out: list[FieldViolation]) -> None:
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or not LABEL_KEY.fullmatch(key):
            out.append(
                FieldViolation(
                    f"{where}.{key}",
                    f"label key {key!r} must be 1-{MAX_LABEL_KEY} letters, digits, '.', '_', '-' or '/', "
                    "starting and ending with a letter or digit",
                )
            )
        if len(value) > MAX_LABEL_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in value):
            out.append(
                FieldViolation(
                    f"{where}.{key}",
                    f"label value must be at most {MAX_LABEL_VALUE} characters without control characters",
                )
            )


def _check_service(
    service: ServiceSpec, where: str, names: set[str], limits: LimitSettings, out: list[FieldViolation]
) -> None:
    problem = _dns_label_problem(service.name, MAX_SERVICE_NAME)
    if problem:
        out.append(FieldViolation(f"{where}.name", problem))
    problem = image_reference_problem(service.image)
    if problem:
        out.append(FieldViolation(f"{where}.image", problem))
    for field_name in ("command", "args"):
        for j, arg in enumerate(getattr(service, field_name)):
            if "\x00" in arg:
                out.append(FieldViolation(f"{where}.{field_name}[{j}]", "must not contain NUL characters"))
    if service.command and not service.command[0]:
        out.append(FieldViolation(f"{where}.command[0]", "the program to run must not be empty"))
    for key, value in service.env.items():
        if not ENV_KEY.fullmatch(key):
            out.append(FieldViolation(f"{where}.env.{key}", f"{clip(key)!r} is not a name like [A-Za-z_][A-Za-z0-9_]*"))
        if "\x00" in value or len(value) > MAX_ENV_VALUE:
            out.append(
                FieldViolation(f"{where}.env.{key}", f"value must be at most {MAX_ENV_VALUE} characters without NUL")
            )
    for key in sorted(service.secret_env - set(service.env)):
        out.append(FieldViolation(f"{where}.secret_env", f"names {key!r}, which is not in env"))
    if len(service.ports) > MAX_PORTS:
        out.append(
            FieldViolation(f"{where}.ports", f"holds {len(service.ports)} entries; at most {MAX_PORTS} are allowed")
        )
    else:
        _check_ports(service, where, out)
    _check_volumes(service, where, out)
    _check_resources(service.resources, f"{where}.resources", limits, out)
    _check_health(service.health, f"{where}.health", out)
    _check_restart(service.restart, f"{where}.restart", out)
    _check_security(service.security, f"{where}.security", limits, out)
    seen: set[str] = set()
    for j, dep in enumerate(service.depends_on):
        at = f"{where}.depends_on[{j}]"
        if dep.service == service.name:
            out.append(FieldViolation(f"{at}.service", "a service cannot depend on itself"))
        elif dep.service not in names:
            out.append(FieldViolation(f"{at}.service", f"names no service of the environment: {dep.service!r}"))
        if dep.service in seen:
            out.append(FieldViolation(f"{at}.service", f"{dep.service!r} is listed twice"))
        seen.add(dep.service)
        if dep.deadline <= timedelta(0):
            out.append(FieldViolation(f"{at}.deadline", "must be positive"))
    if not 1 <= service.replicas <= limits.max_replicas:
        out.append(
            FieldViolation(f"{where}.replicas", f"must be from 1 to {limits.max_replicas}, got {service.replicas}")
        )
    elif service.stateful and service.replicas != 1:
        out.append(
            FieldViolation(f"{where}.replicas", f"a stateful service runs exactly 1 replica, got {service.replicas}")
        )
    if service.user and not USER.fullmatch(service.user):
        out.append(FieldViolation(f"{where}.user", f"{service.user!r} is not USER or USER:GROUP (names or ids)"))
    if service.working_dir:
        _check_path(service.working_dir, f"{where}.working_dir", out)
    if service.stop_grace < timedelta(0):
        out.append(FieldViolation(f"{where}.stop_grace", "must not be negative"))


def _check_ports(service: ServiceSpec, where: str, out: list[FieldViolation]) -> None:
    seen: set[tuple[int, str]] = set()
    for j, port in enumerate(service.ports):
        at = f"{where}.ports[{j}]"
        if not 1 <= port.container_port <= 65535:
            out.append(FieldViolation(f"{at}.container_port", f"must be from 1 to 65535, got {port.container_port}"))
        key = (port.container_port, port.protocol.value)
        if key in seen:
            out.append(
                FieldViolation(
                    f"{at}.container_port",
                    f"{port.container_port}/{port.protocol.value} is listed twice for this service",
                )
            )
        seen.add(key)
        if not 0 <= port.host_port <= 65535:
            out.append(
                FieldViolation(f"{at}.host_port", f"must be 0 (allocate) or a port up to 65535, got {port.host_port}")
            )
        if (port.host_port or port.host_ip) and not port.publish:
            out.append(FieldViolation(f"{at}.publish", "host_port and host_ip only apply to published ports"))
        if port.host_ip:
            _check_ip(port.host_ip, f"{at}.host_ip", out)
        if port.publish and port.host_port and service.replicas > 1:
            out.append(
                FieldViolation(
                    f"{at}.host_port",
                    f"a fixed host port cannot serve {service.replicas} replicas; use 0 to allocate",
                )
            )


def _check_host_ports(spec: EnvironmentSpec, out: list[FieldViolation]) -> None:
    # A wildcard address (empty means the daemon default, which may be anything) clashes with
    # every address, so the check keys on (port, protocol) alone.
    owners: dict[tuple[int, str], str] = {}
    for service in spec.services:
        for j, port in enumerate(service.ports):
            if not (port.publish and port.host_port):
                continue
            key = (port.host_port, port.protocol.value)
            at = f"spec.services.{service.name}.ports[{j}].host_port"
            if key in owners:
                out.append(
                    FieldViolation(
                        at, f"host port {port.host_port}/{port.protocol.value} is also used by {owners[key]}"
                    )
                )
            else:
                owners[key] = at


def _check_path(path: str, where: str, out: list[FieldViolation]) -> None:
    if not path.startswith("/"):
        out.append(FieldViolation(where, f"{path!r} must be an absolute path"))
    elif ".." in path.split("/"):
        out.append(FieldViolation(where, f"{path!r} must not contain '..'"))
    elif "\x00" in path:
        out.append(FieldViolation(where, "must not contain NUL characters"))
    elif posixpath.normpath(path) != path:
        out.append(FieldViolation(where, f"{path!r} is not normalised (expected {posixpath.normpath(path)!r})"))


def _check_volumes(service: ServiceSpec, where: str, out: list[FieldViolation]) -> None:
    paths: set[str] = set()
    for j, volume in enumerate(service.volumes):
        at = f"{where}.volumes[{j}]"
        problem = volume_name_problem(volume.name)
        if problem:
            out.append(FieldViolation(f"{at}.name", problem))
        before = len(out)
        _check_path(volume.path, f"{at}.path", out)
        if len(out) == before and volume.path == "/":
            out.append(FieldViolation(f"{at}.path", "cannot mount a volume over the root directory"))
        if volume.path in paths:
            out.append(FieldViolation(f"{at}.path", f"{volume.path!r} is mounted twice"))
        paths.add(volume.path)


def _check_resources(res: Resources, where: str, limits: LimitSettings, out: list[FieldViolation]) -> None:
    bounded = (
        ("cpu_millis", res.cpu_millis, limits.max_cpu_millis),
        ("memory_bytes", res.memory_bytes, limits.max_memory_bytes),
        ("pids", res.pids, limits.max_pids),
    )
    for name, value, limit in bounded:
        if not 0 <= value <= limit:
            out.append(FieldViolation(f"{where}.{name}", f"must be from 0 (the default) to {limit}, got {value}"))
    requests = (
        ("cpu_request_millis", res.cpu_request_millis, "cpu_millis", res.cpu_millis),
        ("memory_request_bytes", res.memory_request_bytes, "memory_bytes", res.memory_bytes),
    )
    for name, value, limit_name, limit_value in requests:
        if value < 0:
            out.append(FieldViolation(f"{where}.{name}", f"must be 0 (the default) or more, got {value}"))
        elif limit_value > 0 and value > limit_value:
            out.append(FieldViolation(f"{where}.{name}", f"must not exceed {limit_name} ({limit_value}), got {value}"))
    if 0 < res.memory_bytes < MIN_MEMORY_BYTES:
        out.append(FieldViolation(f"{where}.memory_bytes", f"must be 0 (the default) or at least {MIN_MEMORY_BYTES}"))
    if res.cpu_shares and not 2 <= res.cpu_shares <= 262144:
        out.append(
            FieldViolation(f"{where}.cpu_shares", f"must be 0 (default) or from 2 to 262144, got {res.cpu_shares}")
        )
    if res.disk_bytes != 0:
        # No snapshotter quota is set up, so a limit would be accepted and never enforced: refuse it.
        out.append(
            FieldViolation(f"{where}.disk_bytes", "is not supported yet (no disk quota is enforced); leave it 0")
        )


def _check_security(security: Security, where: str, limits: LimitSettings, out: list[FieldViolation]) -> None:
    allowed = set(limits.allowed_capabilities) | set(DEFAULT_CAPABILITIES)
    for field_name in ("cap_add", "cap_drop"):
        for j, raw in enumerate(getattr(security, field_name)):
            name = capability_name(raw)
            at = f"{where}.{field_name}[{j}]"
            if name == "ALL":
                if field_name == "cap_add" and not ALL_CAPABILITIES <= allowed:
                    out.append(FieldViolation(at, "ALL is not allowed: limits.allowed_capabilities does not hold all"))
            elif name not in ALL_CAPABILITIES:
                out.append(FieldViolation(at, f"{raw!r} is not a Linux capability"))
            elif field_name == "cap_add" and name not in allowed:
                out.append(
                    FieldViolation(at, f"{name} is not in limits.allowed_capabilities ({', '.join(sorted(allowed))})")
                )
    if security.seccomp not in ("", SECCOMP_UNCONFINED):
        out.append(
            FieldViolation(
                f"{where}.seccomp",
                f"{security.seccomp!r} is neither empty (the default profile) nor {SECCOMP_UNCONFINED!r}",
            )
        )
    elif security.seccomp == SECCOMP_UNCONFINED and not limits.allow_unconfined_seccomp:
        out.append(
            FieldViolation(f"{where}.seccomp", "unconfined is not allowed: limits.allow_unconfined_seccomp is off")
        )


def _check_health(health: HealthCheck, where: str, out: list[FieldViolation]) -> None:
    if health.kind is HealthCheckKind.NONE:
        return
    if health.interval <= timedelta(0):
        out.append(FieldViolation(f"{where}.interval", "must be positive"))
    if health.timeout <= timedelta(0):
        out.append(FieldViolation(f"{where}.timeout", "must be positive"))
    if health.retries < 1:
        out.append(FieldViolation(f"{where}.retries", f"must be at least 1, got {health.retries}"))
    if health.start_period < timedelta(0):
        out.append(FieldViolation(f"{where}.start_period", "must not be negative"))
    if health.kind is HealthCheckKind.EXEC:
        if not health.command or not health.command[0]:
            out.append(FieldViolation(f"{where}.command", "an exec check needs a command"))
    elif not 1 <= health.port <= 65535:
        out.append(FieldViolation(f"{where}.port", f"must be from 1 to 65535, got {health.port}"))
    if health.kind is HealthCheckKind.HTTP and (
        not health.path.startswith("/") or any(c.isspace() for c in health.path)
    ):
        out.append(FieldViolation(f"{where}.path", f"{health.path!r} must start with '/' and hold no spaces"))


def _check_restart(policy: RestartPolicy, where: str, out: list[FieldViolation]) -> None:
    if policy.max_retries < 0:
        out.append(FieldViolation(f"{where}.max_retries", "must not be negative"))
    if policy.mode is RestartMode.NO:
        return
    if policy.initial_backoff <= timedelta(0):
        out.append(FieldViolation(f"{where}.initial_backoff", "must be positive"))
    if policy.max_backoff < policy.initial_backoff:
        out.append(FieldViolation(f"{where}.max_backoff", "must not be shorter than initial_backoff"))
    if policy.reset_after < timedelta(0):
        out.append(FieldViolation(f"{where}.reset_after", "must not be negative"))
