"""The service's use cases over fakes: validation, idempotency, redaction, conflicts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler.config import LimitSettings
from scheduler.domain import (
    EnvironmentRequest,
    EnvironmentStatus,
    RestartMode,
    RestartPolicy,
    ServiceSpec,
    VolumeMount,
    etag,
)
from scheduler.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound
from scheduler.service import REDACTED, EnvironmentService
from scheduler.stacks.catalog import Catalog
from scheduler.stacks.stack import Stack, StackParameter
from tests.unit.orchestrator.test_supervisor import IMAGE, World, make_world, ms

SECRETIVE = Stack(
    name="secretive",
    description="One container that is handed a secret.",
    services=(
        ServiceSpec(
            name="app",
            image=IMAGE,
            env={"PASSWORD": "${password}", "MODE": "${mode}"},
            restart=RestartPolicy(RestartMode.NO),
            stop_grace=ms(50),
        ),
    ),
    parameters=(
        StackParameter("password", "A secret.", default="hunter2", secret=True),
        StackParameter("mode", "Not a secret.", default="fast"),
    ),
)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[EnvironmentService, World]]:
    world = await make_world(tmp_path)
    service = EnvironmentService(world.ledger, world.orchestrator, world.bus, Catalog([SECRETIVE]), LimitSettings())
    yield service, world
    await world.supervisor.close()
    await world.orchestrator.close()


async def running(service: EnvironmentService, world: World, name: str) -> None:
    await world.orchestrator.wait_idle(name)
    assert (await service.get(name)).status is EnvironmentStatus.RUNNING


async def test_create_validates_and_names_the_bad_field(setup) -> None:
    service, world = setup
    with pytest.raises(InvalidArgument) as err:
        await service.create("Not_A_Name", EnvironmentRequest(stack="secretive"))
    assert any(v.field == "name" for v in err.value.violations)
    with pytest.raises((InvalidArgument, NotFound), match="nope"):
        await service.create("ok", EnvironmentRequest(stack="nope"))
    assert world.ledger.names() == []


async def test_create_with_the_same_request_id_is_idempotent(setup) -> None:
    service, world = setup
    first = await service.create("one", EnvironmentRequest(stack="secretive"), request_id="req-1")
    again = await service.create("one", EnvironmentRequest(stack="secretive"), request_id="req-1")
    assert again.uid == first.uid
    with pytest.raises(AlreadyExists, match="req-1"):
        await service.create("two", EnvironmentRequest(stack="secretive"), request_id="req-1")
    with pytest.raises(AlreadyExists, match="'one'"):
        await service.create("one", EnvironmentRequest(stack="secretive"))
    assert world.ledger.names() == ["one"]
    await running(service, world, "one")


async def test_secrets_are_kept_in_the_store_but_never_returned(setup) -> None:
    service, world = setup
    request = EnvironmentRequest(stack="secretive", parameters={"password": "s3cret"})
    created = await service.create("sec", request)
    await running(service, world, "sec")
    for env in (created, await service.get("sec"), (await service.list())[0][0]):
        assert env.spec.services[0].env == {"PASSWORD": REDACTED, "MODE": "fast"}
        assert env.request is not None and env.request.parameters == {"password": REDACTED}
    stored = await world.store.get("sec")
    assert stored.spec.services[0].env["PASSWORD"] == "s3cret"
    container = next(iter(world.runtime.containers.values()))
    assert container.config.env["PASSWORD"] == "s3cret"


async def test_a_stale_revision_is_refused_for_update_and_delete(setup) -> None:
    service, world = setup
    await service.create("cas", EnvironmentRequest(stack="secretive"))
    await running(service, world, "cas")
    read = await service.get("cas")
    newer = EnvironmentRequest(stack="secretive", parameters={"mode": "slow"})
    updated, _ = await service.update("cas", lambda _: newer, drain=ms(1), etag=etag(read))
    assert updated.revision > read.revision and updated.generation == 2
    await world.orchestrator.wait_idle("cas")
    with pytest.raises(Conflict, match="changed since it was read"):
        await service.update("cas", lambda _: EnvironmentRequest(stack="secretive"), etag=etag(read))
    with pytest.raises(Conflict, match="changed since it was read"):
        await service.delete("cas", etag=etag(read))
    assert (await service.get("cas")).status is EnvironmentStatus.RUNNING
    current = await service.get("cas")
    deleted = await service.delete("cas", etag=etag(current))
    assert deleted.status is EnvironmentStatus.DELETING
    await world.orchestrator.wait_idle("cas")
    with pytest.raises(NotFound):
        await service.get("cas")
    assert [h.action for h in (await service.history("cas"))[0]] == ["create", "update", "delete", "deleted"]


async def test_update_while_deploying_is_a_failed_precondition(setup) -> None:
    service, world = setup
    await service.create("busy", EnvironmentRequest(stack="secretive"))
    await running(service, world, "busy")
    await world.ledger.change("busy", lambda e: replace(e, status=EnvironmentStatus.DEPLOYING))
    with pytest.raises(FailedPrecondition, match="deploying"):
        await service.update("busy", lambda _: EnvironmentRequest(stack="secretive", parameters={"mode": "x"}))
    with pytest.raises(InvalidArgument, match="spec.stack"):
        await service.update("busy", lambda _: EnvironmentRequest(stack="other"))


async def test_concurrent_deletes_mark_once_and_remove_once(setup) -> None:
    service, world = setup
    await service.create("twice", EnvironmentRequest(stack="secretive"))
    await running(service, world, "twice")
    results = await asyncio.gather(*(service.delete("twice") for _ in range(5)))
    assert all(r.status is EnvironmentStatus.DELETING for r in results)
    await world.orchestrator.wait_idle("twice")
    assert world.ledger.find("twice") is None and world.runtime.containers == {}
    assert [h.action for h in (await service.history("twice"))[0]].count("delete") == 1


DATA = Stack(
    name="data",
    description="A service that writes to a volume, and one that mounts none.",
    services=(
        ServiceSpec(
            name="db",
            image=IMAGE,
            volumes=(VolumeMount("data", "/data"),),
            restart=RestartPolicy(RestartMode.NO),
            stop_grace=ms(50),
        ),
        ServiceSpec(name="web", image=IMAGE, restart=RestartPolicy(RestartMode.NO), stop_grace=ms(50)),
    ),
)


@pytest.fixture
async def cloning(tmp_path: Path) -> AsyncIterator[tuple[EnvironmentService, World]]:
    world = await make_world(tmp_path)
    service = EnvironmentService(world.ledger, world.orchestrator, world.bus, Catalog([DATA]), LimitSettings())
    await service.create("source", EnvironmentRequest(stack="data", labels={"team": "a"}))
    await running(service, world, "source")
    yield service, world
    await world.supervisor.close()
    await world.orchestrator.close()


def _keep(request: EnvironmentRequest) -> EnvironmentRequest:
    return request


async def test_clone_copies_volumes_with_only_the_writers_frozen(cloning) -> None:
    service, world = cloning
    volumes = world.tmp / "volumes"
    (volumes / "source" / "data" / "rows").write_text("1\n2\n")
    clone = await service.clone(
        "source", "copy", lambda r: replace(r, labels={**r.labels, "team": "b"}), request_id="c-1"
    )
    assert clone.status is EnvironmentStatus.PENDING and clone.spec.labels == {"team": "b"}
    assert (volumes / "copy" / "data" / "rows").read_text() == "1\n2\n"
    db = (await world.ledger.get("source")).containers[0]
    assert db.service == "db"
    # Only the container mounting the volume was frozen, and thawed again.
    assert [c[1] for c in world.runtime.calls_of("pause")] == [db.container_id]
    assert [c[1] for c in world.runtime.calls_of("resume")] == [db.container_id]
    assert (await service.clone("source", "copy", _keep, request_id="c-1")).uid == clone.uid
    await running(service, world, "copy")
    assert not list(volumes.glob(".scratch-*"))
    actions = [h.action for h in await world.ledger.history("source")]
    assert actions[-1] == "cloned"


async def test_clone_refuses_unknown_taken_and_unsettled_sources(cloning) -> None:
    service, world = cloning
    with pytest.raises(NotFound, match="'ghost'"):
        await service.clone("ghost", "copy", _keep)
    with pytest.raises(AlreadyExists, match="'source'"):
        await service.clone("source", "source", _keep)
    with pytest.raises(InvalidArgument):
        await service.clone("source", "copy", lambda r: replace(r, stack="other"))
    await service.create("young", EnvironmentRequest(stack="data"))
    with pytest.raises(FailedPrecondition, match="'young'.*RUNNING"):
        await service.clone("young", "copy", _keep)
    assert await service.clone("source", "copy", _keep, validate_only=True)
    assert "copy" not in world.ledger.names() and not (world.tmp / "volumes" / "copy").exists()
    await running(service, world, "young")


async def test_a_failed_copy_thaws_the_source_and_leaves_nothing(cloning) -> None:
    service, world = cloning
    (world.tmp / "volumes" / "source" / "data" / "rows").write_text("1\n")
    world.runtime.fail_next("pause", NotFound("gone"))
    with pytest.raises(FailedPrecondition, match="stopped while it was being copied"):
        await service.clone("source", "copy", _keep)
    assert "copy" not in world.ledger.names()
    assert not (world.tmp / "volumes" / "copy").exists() and not list((world.tmp / "volumes").glob(".scratch-*"))
    assert all(c.state.value == "RUNNING" for c in world.runtime.containers.values())
