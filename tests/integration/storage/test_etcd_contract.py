"""The StateStore contract (tests/unit/storage/test_contract.py) run against the etcd store on a real cluster.

Every contract test is imported and runs here with ``store`` an ``EtcdStateStore`` under a key
prefix of the test's own in the session's 3-member cluster.
"""

import pytest

from scheduler.storage.etcd import EtcdClient, EtcdOptions
from scheduler.storage.etcd.store import EtcdStateStore
from tests.unit.storage.test_contract import *  # noqa: F403 - the contract's tests, collected here too

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(etcd_cluster, etcd_prefix):
    client = EtcdClient(EtcdOptions(etcd_cluster.endpoints))
    s = EtcdStateStore(client, etcd_prefix, owns_client=True)
    yield s
    await s.close()
    cleanup = EtcdClient(EtcdOptions(etcd_cluster.endpoints))
    await cleanup.delete(etcd_prefix, prefix=True)
    await cleanup.close()
