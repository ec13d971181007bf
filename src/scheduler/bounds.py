"""What one request may cost: a bound on every size a client can send, checked before any work.

The checks here run first, on the request as received, so that nothing later (resolution,
command splitting, validation, storage, the response) ever handles more than these sizes. Each
violation names the field and the bound. Messages never echo the offending value.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import timedelta

from scheduler.domain import EnvironmentRequest, LogQuery, ServiceOverride
from scheduler.errors import FieldViolation, InvalidArgument

MAX_SPEC_BYTES = 512 * 1024
"""Encoded size of one environment specification; keeps an Environment reply far below 4 MB."""
MAX_SERVICES = 32
MAX_PARAMETERS = 64
MAX_PARAMETER_VALUE = 64 * 1024
MAX_COMMAND_ARGS = 1024
MAX_ARG_BYTES = 64 * 1024
MAX_ENV_ENTRIES = 256
MAX_ENV_VALUE = 32 * 1024
MAX_PORTS = 64
"""Ports per service: each published one costs NAT rules on the host."""
MAX_PUBLISHED_PORTS = 128
"""Published ports of a whole environment, every replica counted."""
MAX_VOLUMES = 32
MAX_DEPENDENCIES = 32
MAX_LABELS = 64
MAX_LOG_SERVICES = 32
MAX_TAIL = 100_000
MAX_NAME = 253
"""Longest name accepted anywhere a name is looked up (the create-time rule is stricter)."""
MAX_REQUEST_ID = 128
MAX_PAGE_TOKEN = 512
MAX_DURATION = timedelta(days=3650)
"""Any duration a client sends (TTL, backoff, health timings, drain...)."""
MAX_TTL = timedelta(days=365)
MAX_DRAIN = timedelta(hours=1)
MAX_METRICS_WINDOW = timedelta(seconds=60)
MAX_KEY = 256
"""Longest key of any map a request carries (env, labels, parameters, services)."""
MAX_ECHO = 64
"""Characters of a client's value that an error message may quote."""


def clip(value: str, limit: int = MAX_ECHO) -> str:
    """A value shortened for an error message: at most ``limit`` characters plus a marker."""
    return value if len(value) <= limit else f"{value[:limit]}...({len(value)} characters)"


def check_request(request: EnvironmentRequest, field: str = "spec") -> None:
    """Refuse a request that carries more than the bounds allow.

    Raises:
        InvalidArgument: naming each field over its bound and the bound.
    """
    out: list[FieldViolation] = []
    _count(request.services, MAX_SERVICES, f"{field}.services", out)
    _count(request.parameters, MAX_PARAMETERS, f"{field}.parameters", out)
    _count(request.labels, MAX_LABELS, f"{field}.labels", out)
    for key, value in request.parameters.items():
        if len(value) > MAX_PARAMETER_VALUE:
            out.append(_too_long(f"{field}.parameters.{clip(key)}", MAX_PARAMETER_VALUE))
    if request.ttl is not None and request.ttl > MAX_TTL:
        out.append(FieldViolation(f"{field}.ttl", f"must be at most {MAX_TTL.days} days"))
    if request.sleep_after_idle is not None and request.sleep_after_idle > MAX_TTL:
        out.append(FieldViolation(f"{field}.sleep_after_idle", f"must be at most {MAX_TTL.days} days"))
    for name, override in list(request.services.items())[:MAX_SERVICES]:
        _check_override(override, f"{field}.services.{clip(name)}", out)
    if out:
        raise InvalidArgument.of(out[:20])


def _check_override(override: ServiceOverride, where: str, out: list[FieldViolation]) -> None:
    for name in ("command", "args"):
        argv: tuple[str, ...] = getattr(override, name) or ()
        _count(argv, MAX_COMMAND_ARGS, f"{where}.{name}", out)
        for j, arg in enumerate(argv[:MAX_COMMAND_ARGS]):
            if len(arg) > MAX_ARG_BYTES:
                out.append(_too_long(f"{where}.{name}[{j}]", MAX_ARG_BYTES))
    _count(override.env, MAX_ENV_ENTRIES, f"{where}.env", out)
    for key, value in override.env.items():
        if len(value) > MAX_ENV_VALUE:
            out.append(_too_long(f"{where}.env.{clip(key)}", MAX_ENV_VALUE))
    _count(override.ports or (), MAX_PORTS, f"{where}.ports", out)
    _count(override.volumes or (), MAX_VOLUMES, f"{where}.volumes", out)
    _count(override.depends_on or (), MAX_DEPENDENCIES, f"{where}.depends_on", out)
    if override.health is not None:
        _count(override.health.command, MAX_COMMAND_ARGS, f"{where}.health_check.exec.command", out)


def check_page_token(page_token: str) -> None:
    """Refuse a page token longer than any the daemon issues, before it is decoded.

    Raises:
        InvalidArgument: naming ``page_token``.
    """
    if len(page_token) > MAX_PAGE_TOKEN:
        raise InvalidArgument.of([FieldViolation("page_token", "is not a token returned by a previous list call")])


def check_logs(query: LogQuery) -> None:
    """Refuse a log query beyond its bounds (services named, tail lines).

    Raises:
        InvalidArgument: naming ``services`` or ``tail``.
    """
    out: list[FieldViolation] = []
    _count(query.services, MAX_LOG_SERVICES, "services", out)
    if not 0 <= query.tail <= MAX_TAIL:
        out.append(FieldViolation("tail", f"must be from 0 (every retained line) to {MAX_TAIL}"))
    if out:
        raise InvalidArgument.of(out)


def check_name(name: str, field: str = "name") -> None:
    """Refuse an empty or oversized name before it is looked up or echoed.

    Raises:
        InvalidArgument: naming ``field``.
    """
    if not name:
        raise InvalidArgument.of([FieldViolation(field, "must not be empty")])
    if len(name) > MAX_NAME:
        raise InvalidArgument.of([_too_long(field, MAX_NAME)])


def check_duration(value: timedelta, field: str, limit: timedelta = MAX_DURATION) -> None:
    """Refuse a duration longer than ``limit``.

    Raises:
        InvalidArgument: naming ``field`` and the bound.
    """
    if value > limit:
        raise InvalidArgument.of([FieldViolation(field, f"must be at most {_human(limit)}")])


def _human(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds} seconds"


def _count(items: Collection[object], limit: int, field: str, out: list[FieldViolation]) -> None:
    if len(items) > limit:
        out.append(FieldViolation(field, f"holds {len(items)} entries; at most {limit} are allowed"))
    if isinstance(items, Mapping):
        for key in items:
            if isinstance(key, str) and len(key) > MAX_KEY:
                out.append(FieldViolation(f"{field}.{clip(key)}", f"key is longer than {MAX_KEY} characters"))
                break


def _too_long(field: str, limit: int) -> FieldViolation:
    return FieldViolation(field, f"is longer than the limit of {limit} characters")
