"""The ``StateStore`` Protocol: where environments, their history and small allocations live.

Two implementations keep the same contract (one parametrised test module checks both):
``SqliteStateStore`` (the daemon's default) and ``MemoryStateStore`` (for unit tests).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry
from scheduler.errors import Conflict, FieldViolation, InvalidArgument

Json = Any
"""A value made of dicts, lists, str, int, float, bool and None."""

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
HISTORY_LIMIT = 1000
"""Entries kept per environment name; older ones are dropped so the audit trail stays bounded."""


class StateStore(Protocol):
    """Durable state of the scheduler. Every method is safe to call concurrently."""

    async def create(self, env: Environment) -> Environment:
        """Store a new environment at revision 1; returns it as stored.

        Raises:
            AlreadyExists: an environment has that name, or was created by the same request id.
        """
        ...

    async def get(self, name: str) -> Environment:
        """Return the environment called ``name``.

        Raises:
            NotFound: naming the environment.
        """
        ...

    async def put(self, env: Environment, *, expected_revision: int) -> Environment:
        """Replace a stored environment with ``env`` if it is still at ``expected_revision``.

        Compare-and-swap: the write lands only if nobody wrote since the caller read revision
        ``expected_revision``; the stored document then gets the next revision, which the
        returned environment carries. A uid mismatch means the environment was deleted and
        created again since the caller read it; writing would clobber the new one, so that is
        reported as NotFound.

        Raises:
            NotFound: no environment has that name and uid.
            Conflict: the stored revision is not ``expected_revision`` (a stale write).
        """
        ...

    async def delete(self, name: str) -> None:
        """Remove an environment; removing a missing one is not an error. History is kept."""
        ...

    async def list(
        self,
        page_size: int,
        page_token: str,
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Environment], str]:
        """Return one page of environments in creation order, and the token of the next page.

        Pagination is by key (creation sequence, name), not offset: environments created or
        deleted between two calls never make a page repeat or skip one that existed throughout.
        ``page_size`` 0 means the default; larger than the maximum is clamped. ``statuses``
        keeps environments in any of them; ``labels`` keeps those carrying every pair. An empty
        next token means this was the last page.

        Raises:
            InvalidArgument: ``page_token`` is not one this store issued, or ``page_size`` < 0.
        """
        ...

    def iterate(self, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[Environment]:
        """Yield every environment (in ``statuses``, if given) in creation order, a page at a time."""
        ...

    async def find_by_request_id(self, request_id: str) -> Environment | None:
        """Return the environment a CreateEnvironment request id made, so retries are idempotent."""
        ...

    async def append_history(self, entry: HistoryEntry) -> None:
        """Record one change to an environment in its audit trail."""
        ...

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """Return the audit trail of environment ``name``, oldest first."""
        ...

    async def put_record(self, kind: str, key: str, value: Json, *, exclusive: bool = False) -> None:
        """Store a small JSON record (a port or subnet allocation) under ``(kind, key)``.

        Raises:
            AlreadyExists: ``exclusive`` is set and the key is held already (an atomic claim).
        """
        ...

    async def get_records(self, kind: str) -> dict[str, Json]:
        """Return every record of ``kind`` by key."""
        ...

    async def delete_record(self, kind: str, key: str) -> None:
        """Remove a record; removing a missing one is not an error."""
        ...

    async def close(self) -> None:
        """Flush and release the store; later calls fail with Unavailable."""
        ...


# --- helpers shared by the implementations ------------------------------------------------------


@dataclass(frozen=True, order=True)
class PageKey:
    """Position after which the next page starts: the last item's creation sequence and name."""

    seq: int
    name: str


_TOKEN_VERSION = 1
_MAX_TOKEN = 512
"""Tokens this store issues are far shorter; a longer one is refused before it is decoded."""


def invalid_field(field: str, description: str) -> InvalidArgument:
    """Build the error for one bad argument, naming it."""
    return InvalidArgument.of([FieldViolation(field, description)])


def encode_page_token(key: PageKey) -> str:
    """Make an opaque page token; clients must not rely on its contents."""
    raw = json.dumps({"v": _TOKEN_VERSION, "s": key.seq, "n": key.name}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> PageKey | None:
    """Read a page token; the empty token means the first page.

    Raises:
        InvalidArgument: naming ``page_token``.
    """
    if not token:
        return None
    bad = invalid_field("page_token", "is not a token returned by a previous list call")
    if len(token) > _MAX_TOKEN:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as err:
        raise bad from err
    if (
        not isinstance(data, dict)
        or data.get("v") != _TOKEN_VERSION
        or not isinstance(data.get("s"), int)
        or isinstance(data.get("s"), bool)
        or not 0 <= data["s"] < 2**63
        or not isinstance(data.get("n"), str)
        or len(data["n"]) > _MAX_TOKEN
    ):
        raise bad
    return PageKey(data["s"], data["n"])


def effective_page_size(page_size: int) -> int:
    """Apply the default and the cap to a requested page size.

    Raises:
        InvalidArgument: naming ``page_size`` when it is negative.
    """
    if page_size < 0:
        raise invalid_field("page_size", f"must be 0 or more, got {page_size}")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def check_record_kind_key(kind: str, key: str) -> None:
    """Refuse empty record kinds and keys, which would collide silently.

    Raises:
        InvalidArgument: naming ``kind`` or ``key``.
    """
    if not kind:
        raise invalid_field("kind", "must not be empty")
    if not key:
        raise invalid_field("key", "must not be empty")


def record_to_text(kind: str, key: str, value: Json) -> str:
    """Serialise a record value, refusing what JSON cannot hold.

    Raises:
        InvalidArgument: naming ``value``.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise invalid_field("value", f"record {kind}/{key} is not JSON-serialisable: {err}") from err


def stale_write(env: Environment, expected: int, stored: int) -> Conflict:
    """Build the error for a write whose expected revision is no longer the stored one."""
    return Conflict(
        f"environment {env.name!r} changed since it was read: revision {stored} is stored, the write expected "
        f"{expected}; read it again and retry",
        env=env.name,
    )


async def iterate_pages(store: StateStore, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[Environment]:
    """Page through ``store.list`` until the end: the one loop behind every ``iterate``."""
    token = ""
    while True:
        page, token = await store.list(MAX_PAGE_SIZE, token, statuses)
        for env in page:
            yield env
        if not token:
            return
