"""What the API answers: environments, history, backups, operations, stacks, logs, metrics, events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf import timestamp_pb2

from scheduler import domain
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api.convert.scalars import CONTAINER_STATE_TO, ENV_STATUS_TO, HEALTH_TO, PROTOCOL_TO, time_to_proto
from scheduler.api.convert.specs import request_to_proto, service_to_proto
from scheduler.errors import FieldViolation, InvalidArgument
from scheduler.stacks.stack import Stack


def environment_to_proto(env: domain.Environment) -> pb.Environment:
    """Convert an environment (already redacted by the service layer) to its wire form."""
    out = pb.Environment(
        name=env.name,
        uid=env.uid,
        etag=domain.etag(env),
        generation=env.generation,
        observed_generation=env.observed_generation,
        status=ENV_STATUS_TO[env.status],
        containers=[_container_to_proto(c) for c in env.containers],
        endpoints=[
            pb.Endpoint(
                service=e.service,
                host_ip=e.host_ip,
                host_port=e.host_port,
                container_port=e.container_port,
                protocol=PROTOCOL_TO[e.protocol],
            )
            for e in env.endpoints
        ],
        conditions=[_condition_to_proto(c) for c in env.conditions],
        services=[service_to_proto(s) for s in env.spec.services],
        node=env.node,
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
        state=CONTAINER_STATE_TO[c.state],
        health=HEALTH_TO[c.health],
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
    converted = time_to_proto(value)
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


def template_to_proto(template: domain.DataTemplate) -> pb.DataTemplate:
    """Convert a description of one data-directory template."""
    out = pb.DataTemplate(
        key=template.key,
        kind=template.kind,
        image=template.image,
        image_digest=template.image_digest,
        parameters=dict(template.parameters),
        size_bytes=template.size_bytes,
        environments=template.environments,
    )
    _set_time(out.create_time, template.created_at)
    _set_time(out.last_use_time, template.last_used_at)
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
