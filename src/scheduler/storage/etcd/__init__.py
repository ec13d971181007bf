"""etcd v3: an asyncio client over grpc.aio, from the project's own copy of etcd 3.4's protos.

What the rest of the scheduler uses (nothing here exposes a protobuf message):

- ``EtcdClient(EtcdOptions(endpoints=(...)))``: ``get``, ``range`` (paged, by prefix, at a
  revision, serializable or linearizable), ``iterate``/``list_prefix`` (a whole prefix at one
  revision), ``put``, ``delete``, ``txn`` (guards + operations), ``cas`` (write if the key's
  mod_revision is still the one read, 0 meaning create-if-absent), ``cas_delete``, ``compact``,
  ``grant``/``revoke``/``time_to_live`` (leases), ``status``/``leader``/``members`` (cluster).
  Every call fails over to the next member while one is down or the cluster elects a leader.
- ``Lease.grant(client, ttl)``: a lease kept alive in the background; ``lost`` is set when it
  expired (or may have); ``close()`` revokes it.
- ``watch_prefix(client, prefix, start_revision)``: snapshots and changes, resumed across member
  failures, re-listed after a compaction.
- ``Election(client, name)``: ``campaign``/``proclaim``/``resign``/``leader``/``observe`` through
  etcd's v3election service.
"""

from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.election import Election
from scheduler.storage.etcd.errors import Compacted
from scheduler.storage.etcd.lease import Lease
from scheduler.storage.etcd.types import (
    CasResult,
    Compare,
    Delete,
    EtcdOptions,
    EventKind,
    Get,
    KeyValue,
    LeaderKey,
    Member,
    MemberStatus,
    Op,
    OpResult,
    Put,
    RangePage,
    Target,
    TxnOp,
    TxnResult,
    WatchBatch,
    WatchEvent,
)
from scheduler.storage.etcd.watch import watch_prefix

__all__ = [
    "CasResult",
    "Compacted",
    "Compare",
    "Delete",
    "Election",
    "EtcdClient",
    "EtcdOptions",
    "EventKind",
    "Get",
    "KeyValue",
    "Lease",
    "LeaderKey",
    "Member",
    "MemberStatus",
    "Op",
    "OpResult",
    "Put",
    "RangePage",
    "Target",
    "TxnOp",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "watch_prefix",
]
