"""The ``StateStore`` Protocol: where environments, their history and small allocations live.

Three implementations keep the same contract (one parametrised test module checks them all):
``SqliteStateStore`` (the daemon's default), ``EtcdStateStore`` (a state shared by several
schedulers) and ``MemoryStateStore`` (for unit tests). What they share beyond the Protocol is
below it: how a list request is read and its page cut, record checks, the errors they raise.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry
from scheduler.errors import AlreadyExists, Conflict, FieldViolation, InvalidArgument, NotFound
from scheduler.storage import codec

T = TypeVar("T")

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


@dataclass(frozen=True)
class ListQuery:
    """One ``list`` call, checked: how many to return, after which key, and what to keep."""

    size: int
    after: PageKey | None
    statuses: frozenset[str]
    """Status values (``EnvironmentStatus.value``) to keep; empty: every status."""
    labels: Mapping[str, str]
    """Label pairs an environment must all carry."""

    @classmethod
    def of(
        cls,
        page_size: int,
        page_token: str,
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> ListQuery:
        """The query of a ``StateStore.list`` call.

        Raises:
            InvalidArgument: naming ``page_size`` or ``page_token``.
        """
        size = effective_page_size(page_size)
        return cls(size, decode_page_token(page_token), frozenset(s.value for s in statuses), dict(labels or {}))

    def keeps(self, key: PageKey, status: str, labels: Mapping[str, str]) -> bool:
        """Whether an environment at ``key`` with this status and labels belongs on this page or later."""
        return (
            (self.after is None or key > self.after)
            and (not self.statuses or status in self.statuses)
            and all(labels.get(k) == v for k, v in self.labels.items())
        )

    def page(self, found: Sequence[tuple[PageKey, T]]) -> tuple[builtins.list[T], str]:
        """The page out of ``found`` (in key order, ``size + 1`` or more if more follow) and the next token.

        The token is empty when nothing follows this page.
        """
        items = found[: self.size]
        token = encode_page_token(items[-1][0]) if len(found) > self.size else ""
        return [item for _, item in items], token


def record_text(kind: str, key: str, value: Json) -> str:
    """A record's value as stored: JSON of ``value``, under a non-empty ``kind`` and ``key``.

    Empty kinds and keys would collide silently; values JSON cannot hold are refused.

    Raises:
        InvalidArgument: naming ``kind``, ``key`` or ``value``.
    """
    if not kind:
        raise invalid_field("kind", "must not be empty")
    if not key:
        raise invalid_field("key", "must not be empty")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise invalid_field("value", f"record {kind}/{key} is not JSON-serialisable: {err}") from err


def record_held(kind: str, key: str) -> AlreadyExists:
    """The error for an exclusive record claim on a key held already."""
    return AlreadyExists(f"record {kind}/{key} is held already", kind=kind, key=key)


def created(env: Environment) -> tuple[Environment, str]:
    """A new environment as stored (revision 1), and its document."""
    env = replace(env, revision=1)
    return env, codec.environment_to_json(env)


def written(env: Environment, expected_revision: int) -> tuple[Environment, str]:
    """An environment as a write over ``expected_revision`` stores it (the next revision), and its document."""
    env = replace(env, revision=expected_revision + 1)
    return env, codec.environment_to_json(env)


def name_taken(name: str) -> AlreadyExists:
    """The error for creating an environment whose name is held."""
    return AlreadyExists(f"environment {name!r} already exists", env=name)


def uid_taken(env: Environment, holder: str) -> AlreadyExists:
    """The error for creating an environment whose uid ``holder`` carries."""
    return AlreadyExists(f"environment uid {env.uid!r} is used by {holder!r}", env=env.name)


def request_taken(request_id: str, holder: str) -> AlreadyExists:
    """The error for a create request id that made ``holder`` already."""
    return AlreadyExists(f"request {request_id!r} already created environment {holder!r}", env=holder)


def not_found(name: str) -> NotFound:
    """The error for an environment name nothing is stored under."""
    return NotFound(f"environment {name!r} not found", env=name)


def uid_not_found(env: Environment) -> NotFound:
    """The error for a write whose environment is gone, or was created again (another uid) since it was read."""
    return NotFound(f"environment {env.name!r} with uid {env.uid!r} not found", env=env.name)


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
