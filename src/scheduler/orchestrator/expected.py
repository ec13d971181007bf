"""Containers stopped on purpose, announced by whoever stops them and read by the supervisor.

Its own module so that the orchestrator and the supervisor share it without importing each other.
"""

from __future__ import annotations

import collections


class ExpectedExits:
    """Containers stopped on purpose (deletes, updates, reconcile): their exits are not failures.

    Bounded: the oldest ids are forgotten first, long after their exits arrived.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._capacity = capacity

    def add(self, container_id: str) -> None:
        """Announce that ``container_id`` is about to be stopped."""
        self._ids[container_id] = None
        self._ids.move_to_end(container_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def __contains__(self, container_id: object) -> bool:
        return container_id in self._ids

    def discard(self, container_id: str) -> None:
        """Supervise ``container_id`` again: it is being started once more (a stopped environment woken)."""
        self._ids.pop(container_id, None)
