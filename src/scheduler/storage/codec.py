"""Domain dataclasses to JSON and back, driven by their type annotations.

The store keeps an environment as one JSON document. Walking the annotations rather than listing
fields by hand makes the codec exhaustive by construction: a field added to ``domain.py`` is stored
without touching this module, and a type the codec cannot encode fails loudly in the round-trip tests.

Encodings: enums by value, ``timedelta`` as integer microseconds (exact), ``datetime`` as ISO 8601
(keeps its offset), tuples and frozensets as lists (frozensets sorted, so documents are stable),
mappings as objects. A field missing from a stored document takes its default, so documents written
before a field existed still load.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from scheduler.domain import Environment, HistoryEntry
from scheduler.errors import Internal

T = TypeVar("T")

_MICROS = timedelta(microseconds=1)


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def encode(value: Any) -> Any:
    """Turn a domain value into plain JSON data (dicts, lists, str, int, float, bool, None)."""
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, timedelta):
        return value // _MICROS
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, frozenset | set):
        return sorted(encode(item) for item in value)
    if isinstance(value, tuple | list):
        return [encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): encode(item) for key, item in value.items()}
    raise Internal(f"cannot encode a {type(value).__name__} as JSON")


def decode(data: Any, annotation: Any, where: str = "$") -> Any:
    """Rebuild a value of type ``annotation`` from JSON data produced by :func:`encode`.

    Raises:
        Internal: naming the JSON path of the first value that does not fit its type.
    """
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        members = typing.get_args(annotation)
        if data is None and type(None) in members:
            return None
        others = [m for m in members if m is not type(None)]
        if len(others) != 1:
            raise Internal(f"{where}: unions other than X | None are not supported")
        return decode(data, others[0], where)
    if annotation is Any:
        return data
    if origin is tuple:
        args = typing.get_args(annotation)
        items = _expect(data, list, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(item, args[0], f"{where}[{i}]") for i, item in enumerate(items))
        if len(args) != len(items):
            raise Internal(f"{where}: expected {len(args)} items, got {len(items)}")
        pairs = enumerate(zip(items, args, strict=True))
        return tuple(decode(item, arg, f"{where}[{i}]") for i, (item, arg) in pairs)
    if origin in (frozenset, set):
        (arg,) = typing.get_args(annotation)
        items = _expect(data, list, where)
        return origin(decode(item, arg, f"{where}[{i}]") for i, item in enumerate(items))
    if origin is list:
        (arg,) = typing.get_args(annotation)
        return [decode(item, arg, f"{where}[{i}]") for i, item in enumerate(_expect(data, list, where))]
    if origin in (Mapping, dict):
        key_type, value_type = typing.get_args(annotation)
        obj = _expect(data, dict, where)
        return {decode(k, key_type, where): decode(v, value_type, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(annotation, type):
        return _decode_type(data, annotation, where)
    raise Internal(f"{where}: cannot decode values of type {annotation!r}")


def _decode_type(data: Any, cls: type[Any], where: str) -> Any:
    if issubclass(cls, enum.Enum):
        try:
            return cls(data)
        except ValueError as err:
            raise Internal(f"{where}: {data!r} is not a {cls.__name__}") from err
    if cls is timedelta:
        return timedelta(microseconds=_expect(data, int, where))
    if cls is datetime:
        try:
            return datetime.fromisoformat(_expect(data, str, where))
        except ValueError as err:
            raise Internal(f"{where}: {data!r} is not an ISO 8601 time") from err
    if dataclasses.is_dataclass(cls):
        obj = _expect(data, dict, where)
        hints = _hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise Internal(f"{where}: unknown {cls.__name__} fields {unknown}")
        kwargs = {name: decode(obj[name], hints[name], f"{where}.{name}") for name in names if name in obj}
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise Internal(f"{where}: cannot build a {cls.__name__}: {err}") from err
    if cls is float:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return float(data)
        raise Internal(f"{where}: expected a number, got {data!r}")
    if cls in (str, int, bool):
        return _expect(data, cls, where)
    raise Internal(f"{where}: cannot decode values of type {cls.__name__}")


def _expect(data: Any, kind: type[T], where: str) -> T:
    # bool is an int in Python; a stored true must never load as 1, nor 1 as true.
    if isinstance(data, kind) and (kind is bool or not isinstance(data, bool)):
        return data
    raise Internal(f"{where}: expected {kind.__name__}, got {type(data).__name__}")


def to_json(value: Any) -> str:
    """Serialise a domain dataclass as compact JSON text with sorted keys."""
    return json.dumps(encode(value), sort_keys=True, separators=(",", ":"))


def from_json(text: str, cls: type[T]) -> T:
    """Parse JSON text written by :func:`to_json` back into a ``cls`` instance.

    Raises:
        Internal: the text is not JSON or does not describe a ``cls``.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise Internal(f"stored {cls.__name__} document is not valid JSON: {err}") from err
    result: T = decode(data, cls)
    return result


def environment_to_json(env: Environment) -> str:
    """Encode an environment, secrets included (the API layer redacts, not the store)."""
    return to_json(env)


def environment_from_json(text: str) -> Environment:
    """Decode an environment document."""
    return from_json(text, Environment)


def history_to_json(entry: HistoryEntry) -> str:
    """Encode one history entry."""
    return to_json(entry)


def history_from_json(text: str) -> HistoryEntry:
    """Decode one history entry."""
    return from_json(text, HistoryEntry)
