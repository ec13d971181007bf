"""The service's side of the v1 API over fakes: list filters and paging, history and stack
paging, validate_only, field-mask edits and etags."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.api import filter as list_filter
from scheduler.config import LimitSettings
from scheduler.domain import EnvironmentRequest, EnvironmentStatus, ServiceOverride, etag
from scheduler.errors import Conflict, InvalidArgument
from scheduler.service import EnvironmentService
from scheduler.stacks.catalog import Catalog
from tests.unit.orchestrator.test_supervisor import make_world
from tests.unit.test_service import SECRETIVE, running

STACK = EnvironmentRequest(stack="secretive")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[EnvironmentService, Any]]:
    world = await make_world(tmp_path)
    yield EnvironmentService(world.ledger, world.orchestrator, world.bus, Catalog([SECRETIVE]), LimitSettings()), world
    await world.supervisor.close()
    await world.orchestrator.close()


async def _names(service: EnvironmentService, text: str, page_size: int = 0) -> list[str]:
    names, token = [], ""
    for _ in range(20):
        page, token = await service.list(page_size=page_size, page_token=token, where=list_filter.parse(text))
        assert len(page) <= (page_size or 50)
        names += [e.name for e in page]
        if not token:
            return names
    raise AssertionError("paging did not end")


async def test_list_filters_by_status_stack_name_prefix_and_labels(setup) -> None:
    service, world = setup
    for name, team in (("pr-1", "web"), ("pr-2", "ops"), ("main", "web")):
        await service.create(name, EnvironmentRequest(stack="secretive", labels={"team": team}))
        await running(service, world, name)
    assert await _names(service, "") == ["pr-1", "pr-2", "main"]
    assert await _names(service, "name=pr-*") == ["pr-1", "pr-2"]
    assert await _names(service, "name!=pr-*") == ["main"]
    assert await _names(service, "stack=secretive labels.team=web") == ["pr-1", "main"]
    assert await _names(service, "labels.team!=web") == ["pr-2"]
    assert await _names(service, "status=running,failed AND name!=pr-1") == ["pr-2", "main"]
    assert await _names(service, "status=FAILED") == []
    assert await _names(service, "status=RUNNING status=FAILED") == []  # both must hold
    # Pages never exceed the size asked for, and page through exactly the matches.
    assert await _names(service, "labels.team=web", page_size=1) == ["pr-1", "main"]
    assert await _names(service, "name=pr-*", page_size=2) == ["pr-1", "pr-2"]


async def test_history_and_stacks_page(setup) -> None:
    service, world = setup
    await service.create("h", STACK)
    await running(service, world, "h")
    edit = lambda current: EnvironmentRequest(stack="secretive", parameters={"mode": "slow"})  # noqa: E731
    await service.update("h", edit)
    entries, token = await service.history("h", page_size=1)
    actions = [e.action for e in entries]
    while token:
        entries, token = await service.history("h", page_size=1, page_token=token)
        actions += [e.action for e in entries]
    assert actions[:2] == ["create", "update"]
    with pytest.raises(InvalidArgument, match="page_token"):
        _, first = await service.history("h", page_size=1)
        await service.history("other", page_token=first)
    stacks, token = service.stacks(page_size=1)
    assert [s.name for s in stacks] == ["secretive"] and token == ""


async def test_validate_only_stores_nothing(setup) -> None:
    service, world = setup
    planned = await service.create("v", STACK, validate_only=True)
    assert planned.name == "v" and world.ledger.names() == []
    await service.create("v", STACK)
    await running(service, world, "v")
    before = await service.get("v")
    edit = lambda current: EnvironmentRequest(stack="secretive", parameters={"mode": "slow"})  # noqa: E731
    _, plan = await service.update("v", edit, validate_only=True)
    assert [c.service for c in plan] == ["app"]
    assert (await service.get("v")).generation == before.generation


async def test_an_edit_sees_the_stored_request_and_a_stale_etag_is_refused(setup) -> None:
    service, world = setup
    await service.create("e", EnvironmentRequest(stack="secretive", parameters={"password": "p1"}))
    await running(service, world, "e")
    read = etag(await service.get("e"))
    seen = []

    def edit(current: EnvironmentRequest) -> EnvironmentRequest:
        seen.append(current)
        return EnvironmentRequest(
            stack=current.stack, parameters=current.parameters, services={"app": ServiceOverride(env={"X": "1"})}
        )

    updated, _ = await service.update("e", edit, etag=read)
    assert seen[0].parameters["password"] == "p1"  # the stored secret, not the redacted one
    assert etag(updated) != read
    with pytest.raises(Conflict) as stale:
        await service.update("e", edit, etag=read)
    assert stale.value.reason == "ETAG_MISMATCH" and stale.value.details["etag"] != read
    with pytest.raises(Conflict):
        await service.delete("e", etag=read)
    assert (await service.get("e")).status is not EnvironmentStatus.DELETING
