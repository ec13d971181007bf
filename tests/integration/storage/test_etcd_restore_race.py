"""RestoreEnvironment racing a CreateEnvironment of the same name through another node, on a real
etcd: exactly one claims the name (etcd's create-if-absent), the other gets ALREADY_EXISTS, and
the loser touched no volume (the winner's, on the same node, included)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.config import LimitSettings
from scheduler.domain import Environment, EnvironmentRequest, EnvironmentStatus
from scheduler.errors import AlreadyExists
from scheduler.orchestrator.backup import RESTORING, Backups
from scheduler.service import EnvironmentService
from scheduler.stacks.catalog import Catalog
from scheduler.storage.etcd import EtcdClient, EtcdOptions
from scheduler.storage.etcd.store import EtcdStateStore
from scheduler.volumes.host import HostVolumeStore
from tests.unit.orchestrator.test_supervisor import World, make_world
from tests.unit.test_service import DATA

pytestmark = pytest.mark.integration

Node = tuple[EnvironmentService, World]


@pytest.fixture
async def nodes(tmp_path: Path, etcd_cluster, etcd_prefix) -> AsyncIterator[tuple[Node, Node]]:
    """Two services on one etcd prefix, each with its own store client and ledger (neither sees the
    other's writes in memory: the widest race a fleet's mirrors allow), sharing the volumes and
    backups directories, as a create placed on the restoring node would."""
    made: list[Node] = []
    for _ in range(2):
        store = EtcdStateStore(EtcdClient(EtcdOptions(etcd_cluster.endpoints)), etcd_prefix, owns_client=True)
        world = await make_world(tmp_path, store)  # type: ignore[arg-type]
        backups = Backups(store, world.runtime, HostVolumeStore(tmp_path / "volumes"), tmp_path / "backups")
        catalog, limits = Catalog([DATA]), LimitSettings()
        service = EnvironmentService(world.ledger, world.orchestrator, world.bus, catalog, limits, backups)
        made.append((service, world))
    yield made[0], made[1]
    for service, world in made:
        for name in world.ledger.names():
            await service.delete(name)
            await world.orchestrator.wait_idle(name)
        await world.supervisor.close()
        await world.orchestrator.close()
        await world.store.close()


async def test_a_restore_and_a_create_of_one_name_on_two_nodes_one_wins_the_loser_touches_nothing(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    (a, a_world), (b, b_world) = nodes
    volumes = tmp_path / "volumes"
    await a.create("source", EnvironmentRequest(stack="data"))
    await a_world.orchestrator.wait_idle("source")
    (volumes / "source" / "data" / "rows").write_text("archived\n")
    backup = await a.backup("source")

    # The create landed first (a's memory does not know it yet): the restore's claim fails, and
    # the winner's volume, on this node, is neither overwritten by the archive nor removed.
    await b.create("twin", EnvironmentRequest(stack="data"))
    await b_world.orchestrator.wait_idle("twin")
    (volumes / "twin" / "data" / "mine").write_text("the winner's\n")
    with pytest.raises(AlreadyExists, match="'twin'"):
        await a.restore(backup.id, "twin")
    assert sorted(p.name for p in (volumes / "twin" / "data").iterdir()) == ["mine"]
    assert (await b.get("twin")).status is EnvironmentStatus.RUNNING

    # At the same moment, over a few names: exactly one of the two wins each.
    for name in ("duo", "trio", "quad"):
        results = await asyncio.gather(
            a.restore(backup.id, name), b.create(name, EnvironmentRequest(stack="data")), return_exceptions=True
        )
        won = [r for r in results if isinstance(r, Environment)]
        lost = [r for r in results if not isinstance(r, Environment)]
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], AlreadyExists), results
        stored = await a_world.store.get(name)
        assert stored.uid == won[0].uid
        await (a_world if results[0] is won[0] else b_world).orchestrator.wait_idle(name)
        stored = await a_world.store.get(name)
        # The restore's gate is lifted once its volumes are in place; a create never had one.
        assert stored.status is EnvironmentStatus.RUNNING and RESTORING not in {c.type for c in stored.conditions}
        restored = (volumes / name / "data" / "rows").exists()
        assert restored == (results[0] is won[0]), (name, results)
