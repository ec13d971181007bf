"""``EtcdEventFeed``: WatchEvents in a fleet, every node's events through one etcd watch.

Each node writes the events it publishes under ``events/<instance>/`` (``EtcdEventLog``); a
watcher, whatever node it asks, reads all of them with one watch on ``events/``. The cursor is
etcd's revision, as Kubernetes' resourceVersion or Nomad's index: an event's sequence is the
revision its key was written at, ``since`` starts the watch at the next revision, and a
``since`` whose history was compacted is OUT_OF_RANGE (Kubernetes' "410 Gone"): the client
re-reads state and watches from the latest. A node's own bus sequences would mean nothing to
another node (nor survive a node's loss), which is why they are not the cursor here. There is no
cursor per node: one revision orders the whole fleet's events. Each watcher asks etcd for its
progress every few seconds (Kubernetes' bookmarks), so the position its heartbeats carry keeps
up with the cluster's revision while no event comes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

from scheduler import log
from scheduler.domain import Event
from scheduler.errors import Internal, OutOfRange
from scheduler.storage.codec import from_json
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.errors import Compacted
from scheduler.storage.etcd.types import EventKind, WatchBatch
from scheduler.storage.etcd.watch import watch_prefix

_log = log.get("events")

_ADVICE = "re-read state with GetEnvironment or ListEnvironments, then watch from the latest"


def start_revision(since: int | None, current: int) -> int:
    """The revision a watch resuming after ``since`` starts at (None: after ``current``, live only).

    Raises:
        OutOfRange: ``since`` is past the cluster's current revision (reason SEQUENCE_IN_FUTURE).
    """
    if since is None:
        return current + 1
    if since > current:
        raise OutOfRange(
            f"since {since} is past the fleet's latest event revision {current}; " + _ADVICE,
            reason="SEQUENCE_IN_FUTURE",
            field="since",
            latest_sequence=str(current),
        )
    return since + 1


def expired(since: int | None, err: Compacted) -> OutOfRange:
    """The error of a watch whose history was compacted away (reason EVENTS_EXPIRED).

    ``oldest_sequence`` is the oldest revision kept: resume with since = oldest_sequence - 1.
    """
    oldest = int(err.details.get("compact_revision", "0"))
    wanted = int(err.details.get("wanted", "0"))
    where = f"since {since}" if since is not None and wanted == since + 1 else f"revision {wanted - 1}"
    return OutOfRange(
        f"{where} is older than the fleet's event history, compacted up to revision {oldest}; " + _ADVICE,
        reason="EVENTS_EXPIRED",
        field="since",
        oldest_sequence=str(oldest),
    )


@dataclass(frozen=True)
class Scanned:
    """What one watch batch holds for a watcher: its events, and the revision it reaches."""

    events: list[Event]
    reached: int


def scan(batch: WatchBatch, environment: str, reached: int) -> Scanned:
    """The events of ``batch`` for ``environment`` (or all), each stamped with its revision.

    Removals (the logs' trimming) are no events; ``reached`` moves to the batch's last revision,
    whichever environment it was for, or to a progress answer's (a batch without events).
    """
    if not batch.events and batch.snapshot is None:
        return Scanned([], max(reached, batch.revision))
    events: list[Event] = []
    for change in batch.events:
        reached = max(reached, change.kv.mod_revision)
        if change.kind is not EventKind.PUT:
            continue
        try:
            event = from_json(change.kv.value.decode(), Event)
        except (Internal, UnicodeDecodeError) as err:
            _log.warning("events.undecodable", key=change.kv.key, error=str(err))
            continue
        if not environment or event.environment == environment:
            events.append(replace(event, sequence=change.kv.mod_revision))
    return Scanned(events, reached)


class FleetWatch:
    """One watcher of the fleet's events (an ``EventWatch``): a watch on ``events/`` from a revision."""

    def __init__(
        self, client: EtcdClient, prefix: str, environment: str, since: int | None, progress_every: float
    ) -> None:
        self._progress_every = progress_every
        self._client = client
        self._prefix = prefix
        self._environment = environment
        self._since = since
        self.position: int | None = since
        """The last revision this watch has gone past (what a heartbeat carries); None until a
        watch asked for live events only has read the current revision."""
        self._events = self._follow()

    def __aiter__(self) -> FleetWatch:
        return self

    async def __anext__(self) -> Event:
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()

    async def _follow(self) -> AsyncGenerator[Event]:
        start = start_revision(self._since, await self._client.revision())
        self.position = start - 1
        changes = watch_prefix(self._client, self._prefix, start, relist=False, progress_every=self._progress_every)
        try:
            async for batch in changes:
                scanned = scan(batch, self._environment, start - 1)
                for event in scanned.events:
                    self.position = event.sequence
                    yield event
                self.position = scanned.reached
        except Compacted as err:
            raise expired(self._since, err) from err
        finally:
            await changes.aclose()


PROGRESS_EVERY = 5.0
"""Seconds between a watcher's progress requests: its heartbeats' position follows the cluster's
revision (writes of other keys included) at most this far behind, so an idle watcher does not
fall behind compactions."""


class EtcdEventFeed:
    """An ``EventFeed`` over every node's event log under ``prefix`` (the fleet's ``events/``)."""

    def __init__(self, client: EtcdClient, prefix: str, progress_every: float = PROGRESS_EVERY) -> None:
        self._client = client
        self._prefix = prefix
        self._progress_every = progress_every

    def watch(self, environment: str = "", since: int | None = None) -> FleetWatch:
        """The fleet's events (of one environment, or all) after revision ``since`` (None: live only)."""
        return FleetWatch(self._client, self._prefix, environment, since, self._progress_every)
