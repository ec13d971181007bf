"""Human-readable tables and JSON for API messages."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb


def to_json(message: Message) -> str:
    """The message as indented JSON, in the API's JSON field names (as grpcurl prints them)."""
    return json.dumps(json_format.MessageToDict(message), indent=2)


def to_json_line(message: Message) -> str:
    """The message as one line of JSON, for streams (one object per line)."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


ELLIPSIS = "…"
MIN_ELIDED = 9


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], width: int | None = None) -> str:
    """Left-aligned columns separated by two spaces, without trailing blanks.

    Cells are printed whole. Only when ``width`` (a terminal's) is given and the table is wider,
    the widest column's long cells are elided in the middle (``demo.fro…0.410724``), which keeps
    both ends of a name visible and marks the cut; never below ``MIN_ELIDED`` characters.
    """
    cells = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    total = sum(widths) + 2 * (len(widths) - 1)
    if width is not None and total > width and widths:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        widths[widest] = max(MIN_ELIDED, widths[widest] - (total - width), len(headers[widest]))
        for row in cells:
            row[widest] = elide(row[widest], widths[widest])
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def elide(text: str, width: int) -> str:
    """``text`` if it fits in ``width``, else its start and end around an ellipsis."""
    if len(text) <= width:
        return text
    keep = width - len(ELLIPSIS)
    head = (keep + 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head) :]


def terminal_width() -> int | None:
    """Columns of the terminal stdout is, or None when it is not one (pipes get whole tables)."""
    import shutil
    import sys

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def enum_name(value: int, enum: object, prefix: str) -> str:
    """``RUNNING`` for ``ENVIRONMENT_STATUS_RUNNING``; the number if the daemon is newer than us."""
    try:
        name: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def status(value: int) -> str:
    """Environment status without its prefix."""
    return enum_name(value, pb.EnvironmentStatus, "ENVIRONMENT_STATUS_")


def timestamp(value: Timestamp) -> str:
    """UTC time to the second, or ``-`` when unset."""
    if not value.seconds and not value.nanos:
        return "-"
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(value: Timestamp, now: datetime | None = None) -> str:
    """Time since ``value`` in the largest sensible unit (``42s``, ``5m``, ``3h``, ``2d``)."""
    if not value.seconds and not value.nanos:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - value.ToDatetime(tzinfo=UTC)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def size(value: int) -> str:
    """Bytes in binary units (``12.5MiB``)."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def endpoint(e: pb.Endpoint) -> str:
    """``frontend 127.0.0.1:32768->80/tcp``."""
    protocol = "udp" if e.protocol == pb.PORT_PROTOCOL_UDP else "tcp"
    return f"{e.service} {e.host_ip}:{e.host_port}->{e.container_port}/{protocol}"


def environment(env: pb.Environment) -> str:
    """Summary, endpoints, conditions and one row per container."""
    lines = [
        f"Name:        {env.name}",
        f"Status:      {status(env.status)}",
        f"Stack:       {env.spec.stack}",
        f"Generation:  {env.generation} (observed {env.observed_generation})",
        f"Created:     {timestamp(env.create_time)}",
        f"Updated:     {timestamp(env.update_time)}",
    ]
    if env.spec.labels:
        lines.append("Labels:      " + ", ".join(f"{k}={v}" for k, v in sorted(env.spec.labels.items())))
    if env.endpoints:
        lines.append("Endpoints:   " + "\n             ".join(endpoint(e) for e in env.endpoints))
    for cond in env.conditions:
        detail = f" ({cond.reason})" if cond.reason else ""
        where = f" [{cond.service}]" if cond.service else ""
        message = f": {cond.message}" if cond.message else ""
        held = enum_name(cond.status, pb.ConditionStatus, "CONDITION_STATUS_").capitalize()
        lines.append(f"Condition:   {cond.type}={held}{detail}{where}{message}")
    if env.containers:
        lines.append("")
        lines.append(containers(env.containers))
    return "\n".join(lines)


def containers(items: Iterable[pb.ContainerStatus]) -> str:
    """One row per container: service, replica, state, health, address, pid, restarts, id."""
    rows = [
        (
            c.service,
            c.replica,
            enum_name(c.state, pb.ContainerState, "CONTAINER_STATE_")
            + (f" ({c.exit_code})" if c.HasField("exit_code") and c.state != pb.CONTAINER_STATE_RUNNING else ""),
            enum_name(c.health, pb.HealthStatus, "HEALTH_STATUS_"),
            c.ip or "-",
            c.pid or "-",
            c.restart_count,
            c.container_id,
        )
        for c in items
    ]
    return table(
        ("SERVICE", "REPLICA", "STATE", "HEALTH", "IP", "PID", "RESTARTS", "CONTAINER"), rows, terminal_width()
    )


def environments(items: Iterable[pb.Environment], now: datetime | None = None) -> str:
    """One row per environment."""
    rows = []
    for env in items:
        running = sum(1 for c in env.containers if c.state == pb.CONTAINER_STATE_RUNNING)
        ports = ",".join(f"{e.host_port}" for e in env.endpoints) or "-"
        rows.append(
            (
                env.name,
                status(env.status),
                env.spec.stack,
                env.generation,
                f"{running}/{len(env.containers)}",
                ports,
                age(env.create_time, now),
            )
        )
    return table(("NAME", "STATUS", "STACK", "GEN", "RUNNING", "PORTS", "AGE"), rows, terminal_width())


def stacks(reply: pb.ListStacksResponse) -> str:
    """One row per stack, parameters with their defaults (secrets shown as ``<secret>``)."""
    rows = []
    for stack in reply.stacks:
        params = ", ".join(p.name + ("=<secret>" if p.secret else "") for p in stack.parameters) or "-"
        rows.append((stack.name, ",".join(s.name for s in stack.services), params, stack.description))
    return table(("NAME", "SERVICES", "PARAMETERS", "DESCRIPTION"), rows, terminal_width())


def nodes(reply: pb.ListNodesResponse) -> str:
    """One row per node: allocated of capacity for CPU, memory and environments."""
    rows = []
    for n in reply.nodes:
        role = "leader" if n.leader else ""
        state = ",".join(s for s in (role, "draining" if n.draining else "") if s) or "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"
        rows.append(
            (
                n.name,
                n.address or "-",
                f"{n.allocated.cpu_millis}m/{n.capacity.cpu_millis}m",
                f"{size(n.allocated.memory_bytes)}/{size(n.capacity.memory_bytes)}",
                f"{n.allocated.environments}/{n.capacity.environments}",
                state,
                labels,
            )
        )
    return table(("NAME", "ADDRESS", "CPU", "MEMORY", "ENVS", "STATE", "LABELS"), rows, terminal_width())


def plan(changes: Iterable[pb.ServiceChange]) -> str:
    """The update plan, service by service."""
    rows = [(c.service, enum_name(c.action, pb.ChangeAction, "CHANGE_ACTION_"), c.reason or "-") for c in changes]
    return table(("SERVICE", "ACTION", "REASON"), rows, terminal_width())


def metrics(reply: pb.EnvironmentMetrics) -> str:
    """One row per container sample."""
    rows = [
        (
            m.service,
            m.replica,
            f"{m.cpu_cores:.2f}",
            size(m.memory_usage_bytes),
            size(m.memory_limit_bytes) if m.memory_limit_bytes else "-",
            m.pids_current,
            size(m.io_read_bytes),
            size(m.io_write_bytes),
        )
        for m in reply.containers
    ]
    return table(("SERVICE", "REPLICA", "CPU", "MEMORY", "LIMIT", "PIDS", "READ", "WRITTEN"), rows, terminal_width())


def history(reply: pb.GetEnvironmentHistoryResponse) -> str:
    """The audit trail, oldest first."""
    rows = [(h.generation, timestamp(h.time), h.actor or "-", h.action, h.detail or "-") for h in reply.entries]
    return table(("GEN", "TIME", "ACTOR", "ACTION", "DETAIL"), rows, terminal_width())


def log_line(line: pb.LogLine) -> str:
    """``backend-0 | text``: which replica wrote it, then the line itself."""
    return f"{line.service}-{line.replica} | {line.line}"


def event(e: pb.Event) -> str:
    """``TIME TYPE ENVIRONMENT [SERVICE-REPLICA] MESSAGE`` on one line."""
    parts = [timestamp(e.time), enum_name(e.type, pb.EventType, "EVENT_TYPE_"), e.environment or "-"]
    if e.service:
        parts.append(f"{e.service}-{e.replica}")
    if e.message:
        parts.append(e.message)
    return " ".join(parts)


def backup(item: pb.Backup) -> str:
    """One archive on one line: id, size, time, what it holds."""
    held = [f"volumes: {', '.join(item.volumes)}" if item.volumes else "", "databases: " + ", ".join(item.databases)]
    details = "; ".join(h for h in held if h and not h.endswith(": "))
    when = item.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{item.id}  {item.size_bytes} bytes  {when}" + (f"  ({details})" if details else "")


def template(item: pb.DataTemplate) -> str:
    """One template on one line: key, kind, image, size, last use, parameters, environments."""
    used = item.last_use_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    parameters = " ".join(f"{k}={v}" for k, v in sorted(item.parameters.items()) if v)
    users = ", ".join(item.environments) or "none"
    head = f"{item.key}  {item.kind}  {item.image}  {item.size_bytes} bytes  used {used}"
    return f"{head}  {parameters}  (environments: {users})"


def operations(reply: pb.ListOperationsResponse) -> str:
    """Each operation, then its steps with the seconds since the operation started."""
    lines = []
    for op in reply.operations:
        start = op.start_time.ToDatetime()
        took = f"{(op.end_time.ToDatetime() - start).total_seconds():.3f}s" if op.HasField("end_time") else "running"
        lines.append(f"\n{op.kind} {op.outcome or 'in progress'} ({took}) at {start.strftime('%Y-%m-%d %H:%M:%S')}Z")
        for step in op.steps:
            offset = (step.time.ToDatetime() - start).total_seconds()
            where = f" {step.service}" if step.service else ""
            lines.append(f"  +{offset:8.3f}s  {step.step:<9}{where}  {step.detail}")
        if op.dropped_steps:
            lines.append(f"  ... {op.dropped_steps} more steps not kept")
    return "\n".join(lines).lstrip("\n") if lines else "no operations recorded"
