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
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from scheduler.domain import Environment, HistoryEntry
from scheduler.errors import Internal

T = TypeVar("T")

_MICROS = timedelta(microseconds=1)


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
    try:
        return _decoder(annotation)(data)
    except _Mismatch as err:
        raise Internal(f"{where}{''.join(reversed(err.path))}: {err.problem}") from err.__cause__


Decoder = Callable[[Any], Any]


class _Mismatch(Exception):
    """A value that does not fit its type; each enclosing decoder adds its step to ``path``."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []


@functools.cache
def _decoder(annotation: Any) -> Decoder:
    """The decoding function of one annotation, built once per type.

    Walking the annotations on every value (``get_origin``, ``get_type_hints``, a path string per
    field) made loading 200 stored environments take a quarter of a second; the path of a value
    that does not fit is now built only when one does not.
    """
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        members = typing.get_args(annotation)
        others = [m for m in members if m is not type(None)]
        if len(others) != 1:
            return _fail("unions other than X | None are not supported")
        inner = _decoder(others[0])
        if type(None) not in members:
            return inner
        return lambda data: None if data is None else inner(data)
    if annotation is Any:
        return _identity
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])
            return lambda data: tuple(_items(_expect(data, list), item))
        fixed = [_decoder(arg) for arg in args]

        def fixed_tuple(data: Any) -> Any:
            items = _expect(data, list)
            if len(items) != len(fixed):
                raise _Mismatch(f"expected {len(fixed)} items, got {len(items)}")
            return tuple(_step(f"[{i}]", d, value) for i, (d, value) in enumerate(zip(fixed, items, strict=True)))

        return fixed_tuple
    if origin in (frozenset, set):
        (arg,) = typing.get_args(annotation)
        item, build = _decoder(arg), origin
        return lambda data: build(_items(_expect(data, list), item))
    if origin is list:
        (arg,) = typing.get_args(annotation)
        item = _decoder(arg)
        return lambda data: list(_items(_expect(data, list), item))
    if origin in (Mapping, dict):
        key_type, value_type = typing.get_args(annotation)
        key, value = _decoder(key_type), _decoder(value_type)

        def mapping(data: Any) -> Any:
            return {key(k): _step(f".{k}", value, v) for k, v in _expect(data, dict).items()}

        return mapping
    if isinstance(annotation, type):
        return _type_decoder(annotation)
    return _fail(f"cannot decode values of type {annotation!r}")


def _type_decoder(cls: type[Any]) -> Decoder:
    if issubclass(cls, enum.Enum):

        def member(data: Any) -> Any:
            try:
                return cls(data)
            except ValueError as err:
                raise _Mismatch(f"{data!r} is not a {cls.__name__}") from err

        return member
    if cls is timedelta:
        return lambda data: timedelta(microseconds=_expect(data, int))
    if cls is datetime:

        def moment(data: Any) -> Any:
            try:
                return datetime.fromisoformat(_expect(data, str))
            except ValueError as err:
                raise _Mismatch(f"{data!r} is not an ISO 8601 time") from err

        return moment
    if dataclasses.is_dataclass(cls):
        return _dataclass_decoder(cls)
    if cls is float:

        def number(data: Any) -> Any:
            if isinstance(data, int | float) and not isinstance(data, bool):
                return float(data)
            raise _Mismatch(f"expected a number, got {data!r}")

        return number
    if cls in (str, int, bool):
        return lambda data: _expect(data, cls)
    return _fail(f"cannot decode values of type {cls.__name__}")


def _dataclass_decoder(cls: type[Any]) -> Decoder:
    names = frozenset(f.name for f in dataclasses.fields(cls))
    hints = typing.get_type_hints(cls)
    fields = [(name, _decoder(hints[name])) for name in sorted(names)]

    def build(data: Any) -> Any:
        obj = _expect(data, dict)
        if not names.issuperset(obj):
            raise _Mismatch(f"unknown {cls.__name__} fields {sorted(set(obj) - names)}")
        kwargs = {}
        for name, decode_field in fields:
            if name in obj:
                try:
                    kwargs[name] = decode_field(obj[name])
                except _Mismatch as err:
                    err.path.append(f".{name}")
                    raise
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise _Mismatch(f"cannot build a {cls.__name__}: {err}") from err

    return build


def _items(items: list[Any], decode_item: Decoder) -> Iterator[Any]:
    for i, item in enumerate(items):
        yield _step(f"[{i}]", decode_item, item)


def _step(where: str, decode_value: Decoder, data: Any) -> Any:
    try:
        return decode_value(data)
    except _Mismatch as err:
        err.path.append(where)
        raise


def _identity(data: Any) -> Any:
    return data


def _fail(problem: str) -> Decoder:
    def fail(data: Any) -> Any:
        raise _Mismatch(problem)

    return fail


def _expect(data: Any, kind: type[T]) -> T:
    # bool is an int in Python; a stored true must never load as 1, nor 1 as true.
    if isinstance(data, kind) and (kind is bool or not isinstance(data, bool)):
        return data
    raise _Mismatch(f"expected {kind.__name__}, got {type(data).__name__}")


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
