"""Scalars and enums of the scheduler proto: durations, timestamps and the enum mapping tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from scheduler import bounds, domain
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.errors import FieldViolation, InvalidArgument

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


def duration_to_proto(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def time_to_proto(value: datetime | None) -> timestamp_pb2.Timestamp | None:
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


PROTOCOL_FROM = {
    pb.PORT_PROTOCOL_UNSPECIFIED: domain.PortProtocol.TCP,
    pb.PORT_PROTOCOL_TCP: domain.PortProtocol.TCP,
    pb.PORT_PROTOCOL_UDP: domain.PortProtocol.UDP,
}
PROTOCOL_TO = {domain.PortProtocol.TCP: pb.PORT_PROTOCOL_TCP, domain.PortProtocol.UDP: pb.PORT_PROTOCOL_UDP}

RESTART_FROM = {
    pb.RESTART_MODE_NO: domain.RestartMode.NO,
    pb.RESTART_MODE_ON_FAILURE: domain.RestartMode.ON_FAILURE,
    pb.RESTART_MODE_ALWAYS: domain.RestartMode.ALWAYS,
    pb.RESTART_MODE_UNLESS_STOPPED: domain.RestartMode.UNLESS_STOPPED,
}
RESTART_TO = {v: k for k, v in RESTART_FROM.items()}

CONDITION_FROM = {
    pb.DEPENDENCY_CONDITION_UNSPECIFIED: domain.DependencyCondition.STARTED,
    pb.DEPENDENCY_CONDITION_STARTED: domain.DependencyCondition.STARTED,
    pb.DEPENDENCY_CONDITION_HEALTHY: domain.DependencyCondition.HEALTHY,
    pb.DEPENDENCY_CONDITION_COMPLETED: domain.DependencyCondition.COMPLETED,
}
CONDITION_TO = {
    domain.DependencyCondition.STARTED: pb.DEPENDENCY_CONDITION_STARTED,
    domain.DependencyCondition.HEALTHY: pb.DEPENDENCY_CONDITION_HEALTHY,
    domain.DependencyCondition.COMPLETED: pb.DEPENDENCY_CONDITION_COMPLETED,
}

ENV_STATUS_TO = {
    status: pb.EnvironmentStatus.Value(f"ENVIRONMENT_STATUS_{status.value}") for status in domain.EnvironmentStatus
}
ENV_STATUS_FROM = {v: k for k, v in ENV_STATUS_TO.items()}
CONTAINER_STATE_TO = {
    state: pb.ContainerState.Value(f"CONTAINER_STATE_{state.value}") for state in domain.ContainerState
}
HEALTH_TO = {
    domain.Health.UNKNOWN: pb.HEALTH_STATUS_UNKNOWN,
    domain.Health.STARTING: pb.HEALTH_STATUS_STARTING,
    domain.Health.HEALTHY: pb.HEALTH_STATUS_HEALTHY,
    domain.Health.UNHEALTHY: pb.HEALTH_STATUS_UNHEALTHY,
    domain.Health.NONE: pb.HEALTH_STATUS_NONE,
}
