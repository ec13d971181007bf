"""The ledger: one owner per environment, changes in order, CAS write-through, reads from memory."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from scheduler.domain import Condition, Environment, EnvironmentRequest, EnvironmentStatus
from scheduler.errors import Conflict, NotFound
from scheduler.orchestrator.expiry import Expiry
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.status import now
from scheduler.storage.memory import MemoryStateStore
from tests.unit.storage.factories import full_environment


class CountingStore(MemoryStateStore):
    """A memory store that counts reads, to show the ledger serves them without the store."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, name: str) -> Environment:
        self.reads += 1
        return await super().get(name)

    async def list(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().list(*args, **kwargs)


async def test_changes_of_one_environment_apply_in_order_each_on_the_previous_result() -> None:
    store = MemoryStateStore()
    ledger = await Ledger.open(store)
    await ledger.create(full_environment("alpha"))

    def add(i: int):  # each change appends one condition to whatever the previous change left
        def change(env: Environment) -> Environment:
            return dataclasses.replace(env, conditions=(*env.conditions, Condition(f"C{i}", True)))

        return change

    await asyncio.gather(*(ledger.change("alpha", add(i)) for i in range(20)))
    env = await ledger.get("alpha")
    assert [c.type for c in env.conditions][-20:] == [f"C{i}" for i in range(20)]
    assert env.revision == 21
    assert await store.get("alpha") == env  # written through


async def test_a_change_that_returns_none_writes_nothing() -> None:
    store = MemoryStateStore()
    ledger = await Ledger.open(store)
    created = await ledger.create(full_environment("alpha"))
    assert await ledger.change("alpha", lambda env: None) is created
    assert await ledger.change("alpha", lambda env: env) is created
    assert (await store.get("alpha")).revision == 1


async def test_a_stale_expected_revision_is_refused_and_changes_nothing() -> None:
    ledger = await Ledger.open(MemoryStateStore())
    created = await ledger.create(full_environment("alpha", status=EnvironmentStatus.RUNNING))
    await ledger.change("alpha", lambda e: dataclasses.replace(e, status=EnvironmentStatus.DEGRADED))
    with pytest.raises(Conflict, match="revision 2, not 1"):
        await ledger.change(
            "alpha", lambda e: dataclasses.replace(e, status=EnvironmentStatus.FAILED), expected_revision=1
        )
    assert (await ledger.get("alpha")).status is EnvironmentStatus.DEGRADED
    done = await ledger.change(
        "alpha", lambda e: dataclasses.replace(e, status=EnvironmentStatus.RUNNING), expected_revision=2
    )
    assert done.revision == 3 and created.revision == 1


async def test_a_write_behind_the_ledgers_back_reloads_and_a_conditional_change_is_refused() -> None:
    store = MemoryStateStore()
    ledger = await Ledger.open(store)
    env = await ledger.create(full_environment("alpha", status=EnvironmentStatus.RUNNING))
    sneaky = await store.put(dataclasses.replace(env, status=EnvironmentStatus.FAILED), expected_revision=1)
    with pytest.raises(Conflict):
        await ledger.change("alpha", lambda e: dataclasses.replace(e, generation=4), expected_revision=1)
    assert await ledger.get("alpha") == sneaky  # the next change starts from what is stored
    assert (await ledger.change("alpha", lambda e: dataclasses.replace(e, generation=5))).revision == 3


async def test_an_unconditional_change_is_applied_again_to_what_another_writer_stored() -> None:
    store = MemoryStateStore()
    ledger = await Ledger.open(store)
    env = await ledger.create(full_environment("alpha", status=EnvironmentStatus.RUNNING))
    seen: list[tuple[int, int]] = []
    ledger.watch(lambda before, after: seen.append((before.revision if before else 0, after.revision if after else 0)))
    await store.put(dataclasses.replace(env, generation=7), expected_revision=env.revision)  # another node's write
    written = await ledger.change("alpha", lambda e: dataclasses.replace(e, status=EnvironmentStatus.DEGRADED))
    assert (written.generation, written.status, written.revision) == (7, EnvironmentStatus.DEGRADED, 3)
    assert seen == [(1, 2), (2, 3)]


async def test_absorb_takes_only_newer_states_of_the_same_incarnation() -> None:
    ledger = await Ledger.open(MemoryStateStore())
    env = await ledger.create(full_environment("alpha"))
    seen: list[object] = []
    ledger.watch(lambda before, after: seen.append(after))
    ledger.absorb(env)  # the same revision: nothing
    newer = dataclasses.replace(env, revision=4, node="n2")
    ledger.absorb(newer)
    ledger.absorb(dataclasses.replace(env, revision=3))  # older: ignored
    assert await ledger.get("alpha") == newer and seen == [newer]
    ledger.absorb_removal("alpha")
    ledger.absorb_removal("alpha")
    assert ledger.find("alpha") is None and seen == [newer, None]


async def test_reads_come_from_memory_not_the_store() -> None:
    store = CountingStore()
    for i in range(5):
        await store.create(full_environment(f"e{i}"))
    ledger = await Ledger.open(store)
    store.reads = 0
    for _ in range(50):
        await ledger.get("e3")
        await ledger.list(2, "")
    assert store.reads == 0
    with pytest.raises(NotFound, match="'ghost'"):
        await ledger.get("ghost")


async def test_list_keeps_the_store_contract_pages_filters_and_tokens() -> None:
    ledger = await Ledger.open(MemoryStateStore())
    for i in range(7):
        status = EnvironmentStatus.RUNNING if i % 2 else EnvironmentStatus.FAILED
        await ledger.create(full_environment(f"e{i}", status=status, labels={"team": "x" if i < 4 else "y"}))
    running, _ = await ledger.list(0, "", statuses=[EnvironmentStatus.RUNNING])
    assert [e.name for e in running] == ["e1", "e3", "e5"]
    team, _ = await ledger.list(0, "", labels={"team": "y"})
    assert [e.name for e in team] == ["e4", "e5", "e6"]
    last, token = await ledger.list(1, "", statuses=[EnvironmentStatus.FAILED], labels={"team": "y"})
    assert [e.name for e in last] == ["e4"] and token
    assert [e.name for e in (await ledger.list(1, token, statuses=[EnvironmentStatus.FAILED]))[0]] == ["e6"]
    seen: list[str] = []
    token = ""
    while True:
        page, token = await ledger.list(3, token)
        seen += [e.name for e in page]
        if not token:
            break
        await ledger.remove(seen[-1])  # removing the last one listed neither repeats nor skips anything
    assert seen == [f"e{i}" for i in range(7)]


async def test_the_order_survives_a_restart() -> None:
    store = MemoryStateStore()
    first = await Ledger.open(store)
    for i in range(4):
        await first.create(full_environment(f"e{i}"))
    page, token = await first.list(2, "")
    again = await Ledger.open(store)
    rest, _ = await again.list(2, token)
    assert [e.name for e in page + rest] == ["e0", "e1", "e2", "e3"]


async def test_watchers_see_every_change_creation_and_removal() -> None:
    ledger = await Ledger.open(MemoryStateStore())
    seen: list[tuple[str | None, str | None]] = []
    ledger.watch(lambda before, after: seen.append((before and before.name, after and after.name)))
    await ledger.create(full_environment("alpha"))
    await ledger.change("alpha", lambda e: dataclasses.replace(e, generation=2))
    await ledger.remove("alpha")
    await ledger.remove("alpha")
    assert seen == [(None, "alpha"), ("alpha", "alpha"), ("alpha", None)]
    with pytest.raises(NotFound):
        await ledger.change("alpha", lambda e: e)


async def test_a_container_change_of_a_missing_environment_or_container_is_none() -> None:
    ledger = await Ledger.open(MemoryStateStore())
    env = await ledger.create(full_environment("alpha"))
    cid = env.containers[0].container_id
    assert await ledger.change_container("ghost", cid, message="x") is None
    assert await ledger.change_container("alpha", "nope", message="x") is None
    assert (await ledger.change_container("alpha", cid, message="x")).message == "x"  # type: ignore[union-attr]
    await ledger.change("alpha", lambda e: dataclasses.replace(e, status=EnvironmentStatus.DELETING))
    assert await ledger.change_container("alpha", cid, unless_deleting=True, message="y") is None


# --- TTL expiry ----------------------------------------------------------------------------------------


def _with_ttl(name: str, ttl: timedelta, age: timedelta) -> Environment:
    env = full_environment(name)
    request = dataclasses.replace(env.request or EnvironmentRequest(stack="x"), ttl=ttl)
    return dataclasses.replace(env, request=request, created_at=now() - age)


async def test_expiry_deletes_only_what_is_due_from_a_heap_not_a_scan() -> None:
    store = CountingStore()
    ledger = await Ledger.open(store)
    deleted: list[str] = []
    expiry = Expiry(ledger, deleted.append)
    await ledger.create(_with_ttl("old", timedelta(minutes=1), timedelta(minutes=2)))
    await ledger.create(_with_ttl("young", timedelta(hours=1), timedelta(minutes=2)))
    await ledger.create(_with_ttl("gone", timedelta(minutes=1), timedelta(minutes=5)))
    await ledger.remove("gone")
    store.reads = 0
    assert await expiry.expire_due(now()) == ["old"]
    assert deleted == ["old"]
    assert (await ledger.get("old")).status is EnvironmentStatus.DELETING
    assert (await ledger.get("young")).status is not EnvironmentStatus.DELETING
    assert await expiry.expire_due(now()) == []  # each deadline fires once
    assert store.reads == 0
    assert [h.action for h in await ledger.history("old")] == ["delete"]


async def test_the_expiry_timer_wakes_for_an_earlier_deadline_and_fires_it() -> None:
    ledger = await Ledger.open(MemoryStateStore())
    deleted: list[str] = []
    expiry = Expiry(ledger, deleted.append)
    await ledger.create(_with_ttl("later", timedelta(hours=1), timedelta(0)))
    expiry.start()
    try:
        await asyncio.sleep(0.01)  # the timer now sleeps until the hour is up
        await ledger.create(_with_ttl("soon", timedelta(milliseconds=50), timedelta(0)))
        for _ in range(200):
            if deleted:
                break
            await asyncio.sleep(0.01)
        assert deleted == ["soon"]
    finally:
        await expiry.close()
