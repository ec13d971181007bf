"""Environment specifications from command-line flags and spec files.

``--set SERVICE.FIELD[.FIELD...]=VALUE`` addresses any field of ``ContainerConfiguration`` by its
proto name (``health_check``) or JSON name (``healthCheck``); the message descriptors drive the
parsing, so new API fields work without client changes.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb


class SpecError(ValueError):
    """A flag or file that does not describe a valid specification; ``option`` names its source."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
        self.message = message


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_pairs(option: str, values: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; the value may itself contain ``=``."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise SpecError(option, f"{option} expects KEY=VALUE, got {value!r}")
        pairs[key.strip()] = rest
    return pairs


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``256Mi``, ``1G`` or ``512MiB`` (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 268435456, 256Mi, 1G)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").lower()])


def load_file(path: Path) -> pb.EnvironmentSpecification:
    """Read a specification (YAML or JSON, field names as in the API) from ``path``."""
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError("--file", f"--file {path}: cannot read it: {err.strerror or err}") from err
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise SpecError("--file", f"--file {path}: not valid {kind}: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise SpecError("--file", f"--file {path}: must hold a mapping of specification fields, not {kind}")
    # Accept a whole CreateEnvironment body too, so one file serves grpcurl and this client.
    if "spec" in data and isinstance(data["spec"], dict):
        data = data["spec"]
    try:
        return json_format.ParseDict(data, pb.EnvironmentSpecification())
    except json_format.ParseError as err:
        raise SpecError("--file", f"--file {path}: {err}") from err


def apply_flags(
    spec: pb.EnvironmentSpecification,
    *,
    params: Mapping[str, str] = {},
    labels: Mapping[str, str] = {},
    sets: Iterable[str] = (),
) -> pb.EnvironmentSpecification:
    """A copy of ``spec`` with parameters, labels and ``--set`` assignments applied in that order."""
    result = pb.EnvironmentSpecification()
    result.CopyFrom(spec)
    for key, value in params.items():
        result.parameters[key] = value
    for key, value in labels.items():
        result.labels[key] = value
    for assignment in sets:
        apply_set(result, assignment)
    return result


def apply_set(spec: pb.EnvironmentSpecification, assignment: str) -> None:
    """Apply one ``SERVICE.PATH=VALUE`` to ``spec.services`` in place."""
    path, sep, value = assignment.partition("=")
    parts = [p.strip() for p in path.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise SpecError("--set", f"--set expects SERVICE.FIELD[.FIELD...]=VALUE, got {assignment!r}")
    service, fields = parts[0], parts[1:]
    message: Message = spec.services[service]
    where = service
    for index, name in enumerate(fields):
        field = _field(message, name, where)
        where = f"{where}.{field.name}"
        rest = fields[index + 1 :]
        if _is_map(field):
            if len(rest) != 1:
                raise SpecError("--set", f"--set {where} is a map: use {where}.KEY=VALUE")
            _set_map(message, field, rest[0], value, where)
            return
        if field.type == FieldDescriptor.TYPE_MESSAGE and rest and not _is_repeated(field):
            message = getattr(message, field.name)
            continue
        if rest:
            raise SpecError("--set", f"--set {where} has no field {rest[0]!r}")
        _set_value(message, field, value, where)
        return
    raise SpecError("--set", f"--set {where} needs a field below it")


def _field(message: Message, name: str, where: str) -> FieldDescriptor:
    by_name = message.DESCRIPTOR.fields_by_name
    by_json = {f.json_name: f for f in message.DESCRIPTOR.fields}
    field: FieldDescriptor | None = by_name.get(name) or by_json.get(name)  # type: ignore[assignment]
    if field is None:
        known = ", ".join(sorted(by_name))
        raise SpecError("--set", f"--set {where}: unknown field {name!r} (known: {known})")
    return field


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    return bool(_is_repeated(field) and field.message_type is not None and field.message_type.GetOptions().map_entry)


def _set_map(message: Message, field: FieldDescriptor, key: str, value: str, where: str) -> None:
    assert field.message_type is not None
    value_field = field.message_type.fields_by_name["value"]
    target = getattr(message, field.name)
    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
        _parse_json_into(target[key], value, f"{where}.{key}")
    else:
        target[key] = _scalar(value_field, value, f"{where}.{key}")


def _set_value(message: Message, field: FieldDescriptor, value: str, where: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if _is_repeated(field):
            items = _json(value, where)
            if not isinstance(items, list):
                items = [items]
            container = getattr(message, field.name)
            del container[:]
            for item in items:
                try:
                    json_format.ParseDict(item, container.add())
                except json_format.ParseError as err:
                    raise SpecError("--set", f"--set {where}: {err}") from err
        elif field.message_type is not None and field.message_type.full_name == Duration.DESCRIPTOR.full_name:
            duration: Duration = getattr(message, field.name)
            try:
                duration.FromJsonString(value if value.endswith("s") else f"{value}s")
            except ValueError as err:
                raise SpecError("--set", f"--set {where}: {value!r} is not a duration such as 1.5s") from err
        else:
            _parse_json_into(getattr(message, field.name), value, where)
        return
    if _is_repeated(field):
        container = getattr(message, field.name)
        del container[:]
        try:
            words = shlex.split(value)
        except ValueError as err:
            raise SpecError("--set", f"--set {where}: {err}") from err
        container.extend(_scalar(field, word, where) for word in words)
        return
    setattr(message, field.name, _scalar(field, value, where))


def _parse_json_into(target: Message, value: str, where: str) -> None:
    data = _json(value, where)
    if not isinstance(data, dict):
        raise SpecError("--set", f"--set {where} expects a JSON object")
    try:
        json_format.ParseDict(data, target)
    except json_format.ParseError as err:
        raise SpecError("--set", f"--set {where}: {err}") from err


def _json(value: str, where: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as err:
        raise SpecError("--set", f"--set {where} expects JSON: {err}") from err


def _scalar(field: FieldDescriptor, value: str, where: str) -> Any:
    kind = field.cpp_type
    try:
        if kind == FieldDescriptor.CPPTYPE_STRING:
            return value
        if kind == FieldDescriptor.CPPTYPE_BOOL:
            lowered = value.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError(f"{value!r} is not true or false")
        if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            return float(value)
        if kind == FieldDescriptor.CPPTYPE_ENUM:
            return _enum(field, value)
        number = parse_size(value) if field.name.endswith("_bytes") else int(value, 0)
        if number < 0 and kind in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
            raise ValueError(f"{value!r} is negative")
        limit = 2**32 if kind in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_INT32) else 2**64
        if number >= limit:
            raise ValueError(f"{value!r} is too large")
        return number
    except ValueError as err:
        raise SpecError("--set", f"--set {where}: {err}") from err


def _enum(field: FieldDescriptor, value: str) -> int:
    """An enum value by full name (RESTART_MODE_ALWAYS), short name (always) or number."""
    assert field.enum_type is not None
    values = field.enum_type.values_by_name
    wanted = value.strip().upper().replace("-", "_")
    prefix = _common_prefix(list(values))
    for name, descriptor in values.items():
        if wanted in (name, name.removeprefix(prefix)):
            return int(descriptor.number)
    if wanted.isdigit() and int(wanted) in field.enum_type.values_by_number:
        return int(wanted)
    choices = ", ".join(n.removeprefix(prefix).lower() for n in values if not n.endswith("_UNSPECIFIED"))
    raise ValueError(f"{value!r} is not one of {choices}")


def _common_prefix(names: list[str]) -> str:
    """The ``ENUM_NAME_`` prefix every value carries (proto style), or empty."""
    if not names:
        return ""
    first = names[0]
    prefix = first[: first.rfind("_") + 1] if "_" in first else ""
    while prefix and not all(n.startswith(prefix) for n in names):
        prefix = prefix[: prefix[:-1].rfind("_") + 1]
    return prefix


def status_value(text: str) -> int:
    """An ``EnvironmentStatus`` from ``running`` or ``ENVIRONMENT_STATUS_RUNNING``."""
    wanted = text.strip().upper().replace("-", "_")
    for name, number in pb.EnvironmentStatus.items():
        if wanted in (name, name.removeprefix("ENVIRONMENT_STATUS_")) and number:
            return int(number)
    choices = ", ".join(n.removeprefix("ENVIRONMENT_STATUS_").lower() for n, v in pb.EnvironmentStatus.items() if v)
    raise SpecError("--status", f"--status {text!r} is not one of {choices}")
