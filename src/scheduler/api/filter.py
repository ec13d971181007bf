"""The ListEnvironments ``filter`` grammar, parsed into a domain ``EnvironmentFilter``.

    filter := term { [ "AND" ] term }
    term   := field ( "=" | "!=" ) value { "," value }
    field  := "status" | "stack" | "name" | "labels." KEY
    value  := bare | '"' quoted '"'        (a name value may end in "*": a prefix)

Terms are separated by spaces (or the word AND) and must all hold; the values of one term are
alternatives. Status values are case-insensitive, with or without ENVIRONMENT_STATUS_.
"""

from __future__ import annotations

import re

from scheduler.domain import EnvironmentFilter, EnvironmentStatus, FilterTerm
from scheduler.errors import FieldViolation, InvalidArgument

MAX_LENGTH = 1024
_FIELDS = ("status", "stack", "name")
_TERM = re.compile(
    r"""\s*(?P<field>[A-Za-z_][A-Za-z0-9_.\-/]*)\s*(?P<op>!=|=)\s*
        (?P<values>(?:"[^"]*"|[^\s",]+)(?:\s*,\s*(?:"[^"]*"|[^\s",]+))*)""",
    re.X,
)
_VALUE = re.compile(r'"([^"]*)"|([^\s",]+)')


def _invalid(description: str) -> InvalidArgument:
    return InvalidArgument.of([FieldViolation("filter", description)])


def parse(text: str) -> EnvironmentFilter:
    """Parse a filter string; the empty string lists everything.

    Raises:
        InvalidArgument: naming ``filter`` and the position or term that is wrong.
    """
    if len(text) > MAX_LENGTH:
        raise _invalid(f"is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
    terms: list[FilterTerm] = []
    position = 0
    while text[position:].strip():
        rest = text[position:]
        conjunction = re.match(r"\s+AND\s+", rest) if terms else None
        if conjunction:
            position += conjunction.end()
            rest = text[position:]
        match = _TERM.match(rest)
        if match is None:
            raise _invalid(f"expected FIELD=VALUE or FIELD!=VALUE at character {position + 1}: {rest.strip()[:40]!r}")
        terms.append(_term(match.group("field"), match.group("op"), match.group("values")))
        position += match.end()
    return EnvironmentFilter(tuple(terms))


def _term(field: str, op: str, raw: str) -> FilterTerm:
    values = tuple(quoted or bare for quoted, bare in _VALUE.findall(raw))
    if field not in _FIELDS and not (field.startswith("labels.") and len(field) > len("labels.")):
        raise _invalid(f"unknown field {field!r}; use status, stack, name or labels.KEY")
    prefix = False
    if field == "status":
        values = tuple(_status(v) for v in values)
    elif field == "name" and any(v.endswith("*") for v in values):
        if not all(v.endswith("*") for v in values):
            raise _invalid("name values of one term must all be prefixes (ending in *) or none")
        values = tuple(v[:-1] for v in values)
        prefix = True
    return FilterTerm(field=field, values=values, negate=op == "!=", prefix=prefix)


def _status(value: str) -> str:
    name = value.upper().removeprefix("ENVIRONMENT_STATUS_")
    try:
        return EnvironmentStatus(name).value
    except ValueError:
        known = ", ".join(s.value for s in EnvironmentStatus)
        raise _invalid(f"{value!r} is not an environment status ({known})") from None
