"""All conversion between the scheduler's proto messages and domain types.

One of the two wire edges (the other is ``runtime/containerd/convert.py``). Functions are
``x_to_proto`` / ``x_from_proto``; nothing else in the code base touches ``scheduler_pb2``
except the thin servicer. One package, three parts: scalars and enums, specifications, and
what the API answers.
"""

from __future__ import annotations

from scheduler.api.convert.nodes import node_to_proto
from scheduler.api.convert.reports import (
    backup_to_proto,
    change_to_proto,
    environment_to_proto,
    event_to_proto,
    history_to_proto,
    log_line_to_proto,
    log_stream_from_proto,
    metrics_to_proto,
    operation_to_proto,
    stack_to_proto,
    template_to_proto,
)
from scheduler.api.convert.scalars import duration_from_proto, duration_to_proto, time_from_proto, time_to_proto
from scheduler.api.convert.specs import request_from_proto, request_to_proto, service_to_proto

__all__ = [
    "backup_to_proto",
    "change_to_proto",
    "duration_from_proto",
    "duration_to_proto",
    "environment_to_proto",
    "event_to_proto",
    "history_to_proto",
    "log_line_to_proto",
    "log_stream_from_proto",
    "node_to_proto",
    "metrics_to_proto",
    "operation_to_proto",
    "request_from_proto",
    "request_to_proto",
    "service_to_proto",
    "stack_to_proto",
    "template_to_proto",
    "time_from_proto",
    "time_to_proto",
]
