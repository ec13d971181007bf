"""The fleet's event cursor (etcd revisions): where a watch starts, what a batch yields, when it expires."""

from datetime import UTC, datetime

import pytest

from scheduler.domain import Event, EventType
from scheduler.errors import OutOfRange
from scheduler.storage.codec import to_json
from scheduler.storage.etcd.errors import Compacted
from scheduler.storage.etcd.feed import expired, scan, start_revision
from scheduler.storage.etcd.types import EventKind, KeyValue, WatchBatch, WatchEvent

AT = datetime(2026, 1, 2, tzinfo=UTC)


def _put(revision: int, env: str, bus_sequence: int) -> WatchEvent:
    event = Event(EventType.ENVIRONMENT_RUNNING, env, AT, sequence=bus_sequence)
    key = f"/p/events/n0/{bus_sequence:020d}"
    return WatchEvent(EventKind.PUT, KeyValue(key, to_json(event).encode(), revision, revision, 1))


def _delete(revision: int) -> WatchEvent:
    return WatchEvent(EventKind.DELETE, KeyValue("/p/events/n0/00000000000000000001", b"", 0, revision, 0))


def test_a_watch_starts_after_since_or_after_the_current_revision_and_refuses_the_future():
    assert start_revision(None, 41) == 42  # live events only
    assert start_revision(0, 41) == 1
    assert start_revision(41, 41) == 42
    with pytest.raises(OutOfRange) as future:
        start_revision(42, 41)
    assert future.value.reason == "SEQUENCE_IN_FUTURE"
    assert future.value.details == {"field": "since", "latest_sequence": "41"}
    assert "since 42" in future.value.message


def test_a_batch_yields_the_events_of_the_environment_asked_stamped_with_their_revisions():
    batch = WatchBatch(30, (_put(20, "shop", 7), _delete(21), _put(25, "web", 3), _put(30, "shop", 8)))
    everything = scan(batch, "", 10)
    assert [(e.environment, e.sequence) for e in everything.events] == [("shop", 20), ("web", 25), ("shop", 30)]
    assert everything.events[0].type is EventType.ENVIRONMENT_RUNNING
    assert everything.reached == 30
    shop = scan(batch, "shop", 10)
    assert [e.sequence for e in shop.events] == [20, 30]
    # Another environment's events (and the logs' trimming) still move the cursor on: a heartbeat
    # after them carries a revision a resumed watch starts after, missing nothing of this one's.
    other = WatchBatch(26, (_put(25, "web", 3), _delete(26)))
    assert scan(other, "shop", 10) == scan(WatchBatch(26, ()), "shop", 26)
    assert scan(other, "shop", 10).reached == 26


def test_a_progress_answer_moves_the_cursor_to_its_revision_and_never_back():
    assert scan(WatchBatch(40), "shop", 30) == scan(WatchBatch(40, ()), "", 40)
    assert scan(WatchBatch(40), "shop", 30).reached == 40 and scan(WatchBatch(25), "", 30).reached == 30


def test_an_undecodable_value_is_skipped_not_fatal():
    bad = WatchEvent(EventKind.PUT, KeyValue("/p/events/n0/x", b"{not json", 5, 5, 1))
    scanned = scan(WatchBatch(6, (bad, _put(6, "shop", 1))), "", 4)
    assert [e.sequence for e in scanned.events] == [6] and scanned.reached == 6


def test_a_compacted_history_is_out_of_range_naming_since_and_the_oldest_revision_kept():
    err = expired(9, Compacted("gone", compact_revision="50", wanted="10"))
    assert err.reason == "EVENTS_EXPIRED"
    assert err.details == {"field": "since", "oldest_sequence": "50"}
    assert err.message.startswith("since 9 is older than the fleet's event history, compacted up to revision 50")
    # Compacted while a watch was following (it had gone past since): the revision it had reached.
    later = expired(9, Compacted("gone", compact_revision="80", wanted="61"))
    assert later.message.startswith("revision 60 is older")
