"""Fixtures shared by the fleet's tests on the session's real etcd cluster."""

from collections.abc import AsyncIterator

import pytest

from scheduler.storage.etcd import EtcdClient, EtcdOptions


@pytest.fixture
async def client(etcd_cluster, etcd_prefix) -> AsyncIterator[EtcdClient]:
    """A client of the session's etcd cluster; the test's prefix is removed at the end."""
    c = EtcdClient(EtcdOptions(etcd_cluster.endpoints, dial_timeout=2.0, retry_deadline=20.0))
    yield c
    await c.delete(etcd_prefix, prefix=True)
    await c.close()
