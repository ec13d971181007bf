"""Apply an UpdateEnvironment ``update_mask`` to a specification, message by message.

Paths name fields of ``EnvironmentSpecification``; a map key is a path segment of its own
(``services.backend.env.LOG_LEVEL``), in backticks when it holds dots
(``labels.`app.kubernetes.io/name```), as AIP-161 describes. A path copies that field (or map
entry) from the request's spec onto the stored one; absent from the request's spec, it is
cleared. Protobuf's own ``FieldMask.MergeMessage`` cannot address map entries, hence this module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

from google.protobuf import message_factory
from google.protobuf.message import Message

from scheduler.errors import FieldViolation, InvalidArgument

M = TypeVar("M", bound=Message)
_SEGMENT = re.compile(r"`([^`]*)`|([^.`]+)")


def split(path: str) -> list[str] | None:
    """Split a path into segments, honouring backticks; None when it is malformed."""
    segments: list[str] = []
    position = 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            return None
        segments.append(match.group(1) if match.group(1) is not None else match.group(2))
        position = match.end()
        if position < len(path):
            if path[position] != ".":
                return None
            position += 1
            if position == len(path):
                return None
    return segments or None


def apply(stored: M, given: M, paths: Sequence[str]) -> M:
    """Return a copy of ``stored`` with the masked fields taken from ``given``.

    Raises:
        InvalidArgument: naming ``update_mask.paths[i]`` for every path that names no field.
    """
    result = type(stored)()
    result.CopyFrom(stored)
    violations: list[FieldViolation] = []
    for index, path in enumerate(paths):
        segments = split(path)
        problem = "is not a valid path" if segments is None else _copy(result, given, segments)
        if problem:
            violations.append(FieldViolation(f"update_mask.paths[{index}]", f"{path!r} {problem}"))
    if violations:
        raise InvalidArgument.of(violations)
    return result


def _copy(target: Message, source: Message, segments: list[str]) -> str:
    """Copy the field ``segments`` name; return what is wrong, or the empty string."""
    name, rest = segments[0], segments[1:]
    field: Any = target.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        return f"names no field: {target.DESCRIPTOR.name} has no {name!r}"
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return _copy_map(field, target, source, rest)
    if not rest:
        if field.is_repeated:
            target.ClearField(name)
            getattr(target, name).extend(getattr(source, name))
        elif field.has_presence and not source.HasField(name):
            target.ClearField(name)
        elif field.message_type is not None:
            getattr(target, name).CopyFrom(getattr(source, name))
        else:
            setattr(target, name, getattr(source, name))
        return ""
    if field.message_type is None or field.is_repeated:
        return f"goes inside {name!r}, which has no fields to select"
    return _copy(getattr(target, name), getattr(source, name), rest)


def _copy_map(field: Any, target: Message, source: Message, rest: list[str]) -> str:
    source_map = getattr(source, field.name)
    if not rest:
        # Read the map after clearing it: a container taken before ClearField is detached from
        # the message, and entries written to it would be lost.
        target.ClearField(field.name)
        target_map = getattr(target, field.name)
        for key in source_map:
            _put(target_map, key, source_map[key])
        return ""
    target_map = getattr(target, field.name)
    key, deeper = rest[0], rest[1:]
    value_field = field.message_type.fields_by_name["value"]
    if not deeper:
        if key in source_map:
            _put(target_map, key, source_map[key])
        elif key in target_map:
            del target_map[key]
        return ""
    if value_field.message_type is None:
        return f"goes inside the value of {field.name}.{key}, which is not a message"
    source_value = source_map[key] if key in source_map else message_factory.GetMessageClass(value_field.message_type)()
    return _copy(target_map[key], source_value, deeper)


def _put(target_map: object, key: str, value: object) -> None:
    if isinstance(value, Message):
        target_map[key].CopyFrom(value)  # type: ignore[index]
    else:
        target_map[key] = value  # type: ignore[index]
