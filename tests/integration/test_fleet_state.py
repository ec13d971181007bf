"""`scheduler run` with cluster.etcd set keeps its state in etcd: what it stores is there after a restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.storage.etcd import EtcdClient, EtcdOptions
from tests.support.daemon import start_daemon

pytestmark = pytest.mark.integration


async def _keys(endpoints, prefix):
    client = EtcdClient(EtcdOptions(endpoints))
    try:
        return [kv.key for kv in (await client.list_prefix(prefix)).kvs]
    finally:
        await client.close()


async def _revision(endpoints):
    client = EtcdClient(EtcdOptions(endpoints))
    try:
        return await client.revision()
    finally:
        await client.close()


def test_the_daemon_keeps_environments_and_events_in_etcd_across_a_restart(tmp_path, etcd_cluster, etcd_prefix):
    # pull_policy never: the stack's images are not there, so the deploy fails at once; the
    # environment is stored all the same, which is what this test is about.
    config = {
        # Placement counts CPU requests (a quarter of a core per service by default), so a
        # 3-service stack fits the offer of a small host.
        "cluster": {"etcd": {"endpoints": list(etcd_cluster.endpoints), "prefix": etcd_prefix}},
        "images": {"pull_policy": "never"},
    }
    daemon = start_daemon(tmp_path, config)
    try:
        before = asyncio.run(_revision(etcd_cluster.endpoints))
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            created = stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name="fleet-one", spec=pb.EnvironmentSpecification(stack="web-postgres")),
                timeout=30,
            )
            assert created.name == "fleet-one"
        keys = asyncio.run(_keys(etcd_cluster.endpoints, etcd_prefix))
        assert f"{etcd_prefix}env/fleet-one" in keys
        # Events are written to etcd by a queue behind the publisher, so they may land just after
        # the reply; wait for them, boundedly.
        deadline = time.monotonic() + 10
        while not any(k.startswith(f"{etcd_prefix}events/") for k in keys) and time.monotonic() < deadline:
            time.sleep(0.05)
            keys = asyncio.run(_keys(etcd_cluster.endpoints, etcd_prefix))
        assert any(k.startswith(f"{etcd_prefix}events/") for k in keys)
        assert not (daemon.data_dir / "state.db").exists()
        assert daemon.stop() == 0

        daemon = start_daemon(tmp_path, reuse_config=True)
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            got = stub.GetEnvironment(pb.GetEnvironmentRequest(name="fleet-one"), timeout=30)
            assert got.uid == created.uid
            listed = stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=30)
            assert [e.name for e in listed.environments] == ["fleet-one"]
            # The events published before the restart are replayed from etcd; in a fleet a
            # sequence is the etcd revision the event was written at.
            events = stub.WatchEvents(pb.WatchEventsRequest(name="fleet-one", since=before), timeout=10)
            replayed = next(e for e in events if e.environment == "fleet-one")
            assert replayed.sequence > before and replayed.type == pb.EVENT_TYPE_ENVIRONMENT_CREATED
            events.cancel()
        daemon.delete_all_environments()
        assert asyncio.run(_keys(etcd_cluster.endpoints, f"{etcd_prefix}env/")) == []
    finally:
        daemon.delete_all_environments()
        daemon.stop()
        daemon.cleanup()
