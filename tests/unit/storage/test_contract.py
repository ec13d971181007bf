"""The StateStore contract, run against every implementation."""

import asyncio
import dataclasses
import json

import pytest

from scheduler.domain import EnvironmentStatus
from scheduler.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from scheduler.storage.base import HISTORY_LIMIT, MAX_PAGE_SIZE, PageKey, StateStore, encode_page_token
from scheduler.storage.memory import MemoryStateStore
from scheduler.storage.sqlite import SqliteStateStore
from tests.unit.storage.factories import full_environment, history_entry


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    s: StateStore = MemoryStateStore() if request.param == "memory" else SqliteStateStore(tmp_path / "state.db")
    yield s
    await s.close()


async def test_create_then_get_returns_an_equal_environment(store):
    env = full_environment("alpha", request_id="r-1")
    created = await store.create(env)
    assert created == dataclasses.replace(env, revision=1)
    assert await store.get("alpha") == created


async def test_create_twice_is_already_exists_naming_the_environment(store):
    await store.create(full_environment("alpha"))
    with pytest.raises(AlreadyExists, match="'alpha'"):
        await store.create(full_environment("alpha"))


async def test_create_with_a_used_uid_or_request_id_is_already_exists(store):
    first = full_environment("alpha", request_id="req-1")
    await store.create(first)
    with pytest.raises(AlreadyExists, match="uid"):
        await store.create(dataclasses.replace(full_environment("beta"), uid=first.uid))
    with pytest.raises(AlreadyExists, match="req-1"):
        await store.create(full_environment("gamma", request_id="req-1"))
    names = [e.name for e in (await store.list(0, ""))[0]]
    assert names == ["alpha"]


async def test_get_missing_is_not_found_naming_it(store):
    with pytest.raises(NotFound, match="'ghost'") as err:
        await store.get("ghost")
    assert err.value.details["env"] == "ghost"


async def test_put_replaces_the_document_and_indexed_columns(store):
    env = await store.create(full_environment("alpha", status=EnvironmentStatus.DEPLOYING, labels={"team": "a"}))
    spec = dataclasses.replace(env.spec, labels={"team": "b"})
    updated = dataclasses.replace(env, status=EnvironmentStatus.FAILED, generation=9, spec=spec)
    written = await store.put(updated, expected_revision=env.revision)
    assert written == dataclasses.replace(updated, revision=2)
    assert await store.get("alpha") == written
    assert (await store.list(0, "", statuses=[EnvironmentStatus.DEPLOYING]))[0] == []
    assert [e.name for e in (await store.list(0, "", statuses=[EnvironmentStatus.FAILED]))[0]] == ["alpha"]
    assert (await store.list(0, "", labels={"team": "a"}))[0] == []
    assert [e.name for e in (await store.list(0, "", labels={"team": "b"}))[0]] == ["alpha"]


async def test_put_of_a_missing_or_recreated_environment_is_not_found(store):
    env = full_environment("alpha")
    with pytest.raises(NotFound, match="'alpha'"):
        await store.put(env, expected_revision=1)
    await store.create(env)
    await store.delete("alpha")
    recreated = await store.create(full_environment("alpha"))
    with pytest.raises(NotFound, match="'alpha'"):
        await store.put(dataclasses.replace(env, generation=99), expected_revision=1)
    assert await store.get("alpha") == recreated


async def test_delete_is_idempotent_and_keeps_history(store):
    await store.create(full_environment("alpha"))
    await store.append_history(history_entry("alpha", 1, "create"))
    await store.delete("alpha")
    await store.delete("alpha")
    await store.delete("never-existed")
    with pytest.raises(NotFound):
        await store.get("alpha")
    assert [h.action for h in await store.history("alpha")] == ["create"]


async def test_list_pages_in_creation_order_and_ends_with_an_empty_token(store):
    for i in range(7):
        await store.create(full_environment(f"env-{6 - i}"))
    seen, token, calls = [], "", 0
    while True:
        page, token = await store.list(3, token)
        calls += 1
        seen += [e.name for e in page]
        if not token:
            break
    assert seen == [f"env-{6 - i}" for i in range(7)]
    assert calls == 3


async def test_list_exact_multiple_of_page_size_has_no_trailing_empty_page(store):
    for i in range(4):
        await store.create(full_environment(f"env-{i}"))
    page, token = await store.list(2, "")
    page2, token2 = await store.list(2, token)
    assert [e.name for e in page + page2] == ["env-0", "env-1", "env-2", "env-3"]
    assert token2 == ""


async def test_pagination_is_stable_under_concurrent_creates_and_deletes(store):
    for i in range(6):
        await store.create(full_environment(f"e{i}"))
    page, token = await store.list(2, "")
    assert [e.name for e in page] == ["e0", "e1"]
    # Between pages: delete one already returned, one not yet returned, and create new ones.
    await store.delete("e1")
    await store.delete("e3")
    await store.create(full_environment("late-a"))
    await store.create(full_environment("e1"))  # same name again: a new, later environment
    rest = []
    while token:
        page, token = await store.list(2, token)
        rest += [e.name for e in page]
    # Nothing that existed throughout is skipped or repeated; creations appear after, in order.
    assert rest == ["e2", "e4", "e5", "late-a", "e1"]


async def test_token_after_the_last_item_was_deleted_still_continues(store):
    for i in range(4):
        await store.create(full_environment(f"e{i}"))
    _, token = await store.list(2, "")
    await store.delete("e1")
    page, token = await store.list(2, token)
    assert [e.name for e in page] == ["e2", "e3"]
    assert token == ""


async def test_list_filters_by_any_status_and_all_labels(store):
    await store.create(full_environment("a", status=EnvironmentStatus.RUNNING, labels={"team": "x", "tier": "dev"}))
    await store.create(full_environment("b", status=EnvironmentStatus.FAILED, labels={"team": "x"}))
    await store.create(full_environment("c", status=EnvironmentStatus.PENDING, labels={"team": "y", "tier": "dev"}))

    async def names(**kw):
        return [e.name for e in (await store.list(0, "", **kw))[0]]

    assert await names(statuses=[EnvironmentStatus.RUNNING, EnvironmentStatus.FAILED]) == ["a", "b"]
    assert await names(labels={"team": "x"}) == ["a", "b"]
    assert await names(labels={"team": "x", "tier": "dev"}) == ["a"]
    assert await names(labels={"tier": "dev"}, statuses=[EnvironmentStatus.PENDING]) == ["c"]
    assert await names(labels={"team": "z"}) == []


async def test_filtered_pagination_walks_only_matching_items(store):
    for i in range(6):
        status = EnvironmentStatus.RUNNING if i % 2 else EnvironmentStatus.STOPPED
        await store.create(full_environment(f"e{i}", status=status))
    seen, token = [], ""
    for _ in range(10):
        page, token = await store.list(1, token, statuses=[EnvironmentStatus.RUNNING])
        seen += [e.name for e in page]
        if not token:
            break
    assert seen == ["e1", "e3", "e5"]


@pytest.mark.parametrize(
    "token",
    ["not-base64!!", "e30", "bm9wZQ", encode_page_token(PageKey(1, "x")).replace("e", "f", 3), "eyJ2IjoyfQ"],
)
async def test_bad_page_token_is_invalid_argument_naming_page_token(store, token):
    with pytest.raises(InvalidArgument) as err:
        await store.list(10, token)
    assert [v.field for v in err.value.violations] == ["page_token"]


async def test_page_size_defaults_clamps_and_refuses_negative(store):
    for i in range(3):
        await store.create(full_environment(f"e{i}"))
    assert len((await store.list(0, ""))[0]) == 3
    assert len((await store.list(MAX_PAGE_SIZE * 10, ""))[0]) == 3
    with pytest.raises(InvalidArgument) as err:
        await store.list(-1, "")
    assert [v.field for v in err.value.violations] == ["page_size"]


async def test_find_by_request_id(store):
    env = await store.create(full_environment("alpha", request_id="req-42"))
    await store.create(full_environment("beta"))
    assert await store.find_by_request_id("req-42") == env
    assert await store.find_by_request_id("req-43") is None
    assert await store.find_by_request_id("") is None
    await store.delete("alpha")
    assert await store.find_by_request_id("req-42") is None


async def test_history_is_per_environment_in_order_and_bounded(store):
    for gen in range(1, 4):
        await store.append_history(history_entry("alpha", gen, f"step-{gen}"))
    await store.append_history(history_entry("beta", 1, "other"))
    assert [h.action for h in await store.history("alpha")] == ["step-1", "step-2", "step-3"]
    assert await store.history("nobody") == []
    for gen in range(HISTORY_LIMIT + 5):
        await store.append_history(history_entry("gamma", gen, "x"))
    kept = await store.history("gamma")
    assert len(kept) == HISTORY_LIMIT
    assert kept[0].generation == 5 and kept[-1].generation == HISTORY_LIMIT + 4


async def test_records_put_get_delete_and_exclusive_claims(store):
    await store.put_record("port", "20001", {"env": "alpha", "service": "frontend"})
    await store.put_record("port", "20000", {"env": "beta"})
    await store.put_record("subnet", "10.88.1.0/24", "alpha")
    assert await store.get_records("port") == {
        "20000": {"env": "beta"},
        "20001": {"env": "alpha", "service": "frontend"},
    }
    await store.put_record("port", "20000", {"env": "gamma"})
    assert (await store.get_records("port"))["20000"] == {"env": "gamma"}
    with pytest.raises(AlreadyExists, match="port/20000"):
        await store.put_record("port", "20000", {"env": "delta"}, exclusive=True)
    await store.put_record("port", "20002", [1, 2], exclusive=True)
    await store.delete_record("port", "20000")
    await store.delete_record("port", "20000")
    assert await store.get_records("port") == {
        "20001": {"env": "alpha", "service": "frontend"},
        "20002": [1, 2],
    }
    assert await store.get_records("subnet") == {"10.88.1.0/24": "alpha"}
    assert await store.get_records("nothing") == {}


async def test_records_refuse_empty_keys_and_non_json_values(store):
    with pytest.raises(InvalidArgument) as err:
        await store.put_record("port", "", 1)
    assert err.value.violations[0].field == "key"
    with pytest.raises(InvalidArgument) as err:
        await store.put_record("", "k", 1)
    assert err.value.violations[0].field == "kind"
    with pytest.raises(InvalidArgument) as err:
        await store.put_record("port", "1", {"x": object()})
    assert err.value.violations[0].field == "value"
    with pytest.raises(InvalidArgument):
        await store.put_record("port", "1", float("nan"))


async def test_returned_values_do_not_alias_the_store(store):
    env = full_environment("alpha")
    await store.create(env)
    got = await store.get("alpha")
    got.spec.labels["team"] = "mutated"  # type: ignore[index]
    assert (await store.get("alpha")).spec.labels["team"] == "a"
    value = {"a": [1]}
    await store.put_record("k", "1", value)
    value["a"].append(2)
    assert (await store.get_records("k"))["1"] == {"a": [1]}


async def test_concurrent_exclusive_claims_have_exactly_one_winner(store):
    async def claim(i):
        try:
            await store.put_record("port", "25000", {"by": i}, exclusive=True)
            return i
        except AlreadyExists:
            return None

    winners = [w for w in await asyncio.gather(*(claim(i) for i in range(20))) if w is not None]
    assert len(winners) == 1
    assert await store.get_records("port") == {"25000": {"by": winners[0]}}


async def test_concurrent_creates_get_distinct_ordered_sequences(store):
    await asyncio.gather(*(store.create(full_environment(f"c{i:02d}")) for i in range(30)))
    everything, token = [], ""
    for _ in range(10):
        page, token = await store.list(7, token)
        everything += [e.name for e in page]
        if not token:
            break
    assert sorted(everything) == [f"c{i:02d}" for i in range(30)]
    assert len(set(everything)) == 30


async def test_closed_store_is_unavailable(store):
    await store.close()
    with pytest.raises(Unavailable):
        await store.get("alpha")
    await store.close()


def test_page_tokens_are_opaque_url_safe_text():
    token = encode_page_token(PageKey(12, "alpha"))
    assert token.isascii() and "=" not in token and "/" not in token and "+" not in token
    assert "alpha" not in token
    assert json.dumps(token)


async def test_every_write_bumps_the_revision_and_a_stale_write_is_refused(store):
    created = await store.create(full_environment("alpha"))
    assert created.revision == 1
    first = await store.put(dataclasses.replace(created, status=EnvironmentStatus.RUNNING), expected_revision=1)
    assert first.revision == 2
    # A writer that read revision 1 (before the write above) is refused, and nothing changes.
    stale = dataclasses.replace(created, status=EnvironmentStatus.FAILED)
    with pytest.raises(Conflict, match="'alpha'.*revision 2 is stored.*expected 1") as err:
        await store.put(stale, expected_revision=1)
    assert err.value.details["env"] == "alpha"
    stored = await store.get("alpha")
    assert (stored.status, stored.revision) == (EnvironmentStatus.RUNNING, 2)
    # An expected revision from the future is as stale as one from the past.
    with pytest.raises(Conflict):
        await store.put(stored, expected_revision=3)
    assert (await store.put(stored, expected_revision=2)).revision == 3
    assert (await store.get("alpha")).revision == 3
    assert [e.revision for e in (await store.list(0, ""))[0]] == [3]


async def test_concurrent_writers_from_one_read_land_exactly_once(store):
    env = await store.create(full_environment("alpha"))
    writes = [store.put(dataclasses.replace(env, generation=g), expected_revision=env.revision) for g in range(2, 12)]
    results = await asyncio.gather(*writes, return_exceptions=True)
    landed = [r for r in results if not isinstance(r, BaseException)]
    assert len(landed) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    assert await store.get("alpha") == landed[0]


async def test_iterate_yields_every_environment_across_pages_in_creation_order(store):
    for i in range(MAX_PAGE_SIZE + 3):
        await store.create(
            full_environment(f"e{i:03d}", status=EnvironmentStatus.RUNNING if i % 2 else EnvironmentStatus.FAILED)
        )
    names = [e.name async for e in store.iterate()]
    assert names == [f"e{i:03d}" for i in range(MAX_PAGE_SIZE + 3)]
    running = [e.name async for e in store.iterate([EnvironmentStatus.RUNNING])]
    assert running == [f"e{i:03d}" for i in range(MAX_PAGE_SIZE + 3) if i % 2]
