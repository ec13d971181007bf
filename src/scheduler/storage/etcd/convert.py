"""etcd's protobuf messages to and from the client's value types: the one place they meet."""

from __future__ import annotations

from scheduler.storage.etcd._gen.etcd.api.etcdserverpb import rpc_pb2 as pb
from scheduler.storage.etcd._gen.etcd.api.mvccpb import kv_pb2 as mvccpb
from scheduler.storage.etcd._gen.etcd.api.v3electionpb import v3election_pb2 as electionpb
from scheduler.storage.etcd.types import (
    Compare,
    Delete,
    EventKind,
    KeyValue,
    LeaderKey,
    OpResult,
    Put,
    TxnOp,
    WatchEvent,
)


def encode_key(key: str) -> bytes:
    """A key as etcd stores it."""
    return key.encode()


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def kv_from_proto(kv: mvccpb.KeyValue) -> KeyValue:
    """A stored key from etcd's message."""
    return KeyValue(
        key=kv.key.decode(errors="surrogateescape"),
        value=bytes(kv.value),
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def event_from_proto(event: mvccpb.Event) -> WatchEvent:
    """A watched change from etcd's message."""
    kind = EventKind.DELETE if event.type == mvccpb.Event.DELETE else EventKind.PUT
    prev = kv_from_proto(event.prev_kv) if event.HasField("prev_kv") else None
    return WatchEvent(kind, kv_from_proto(event.kv), prev)


def compare_to_proto(compare: Compare) -> pb.Compare:
    """A transaction guard as etcd's message."""
    msg = pb.Compare(result=compare.op.value, target=compare.target.value, key=encode_key(compare.key))  # type: ignore[arg-type]
    field = {0: "version", 1: "create_revision", 2: "mod_revision", 3: "value", 4: "lease"}[compare.target.value]
    setattr(msg, field, compare.operand)
    return msg


def range_request(
    key: str,
    *,
    prefix: bool,
    limit: int = 0,
    revision: int = 0,
    serializable: bool = False,
    start: str | None = None,
    by_creation: bool = False,
    min_create_revision: int = 0,
) -> pb.RangeRequest:
    """A range read of one key, or of the keys under ``key`` from ``start`` on (or in creation order)."""
    raw = encode_key(key)
    return pb.RangeRequest(
        key=encode_key(start) if start is not None else raw,
        range_end=prefix_end(raw) if prefix else b"",
        limit=limit,
        revision=revision,
        serializable=serializable,
        sort_order=pb.RangeRequest.ASCEND if by_creation else pb.RangeRequest.NONE,
        sort_target=pb.RangeRequest.CREATE if by_creation else pb.RangeRequest.KEY,
        min_create_revision=min_create_revision,
    )


def op_to_proto(op: TxnOp) -> pb.RequestOp:
    """One operation of a transaction as etcd's message."""
    if isinstance(op, Put):
        return pb.RequestOp(request_put=pb.PutRequest(key=encode_key(op.key), value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        raw = encode_key(op.key)
        end = encode_key(op.end) if op.end is not None else prefix_end(raw) if op.prefix else b""
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=raw, range_end=end))
    return pb.RequestOp(request_range=range_request(op.key, prefix=op.prefix, limit=op.limit))


def op_result_from_proto(resp: pb.ResponseOp) -> OpResult:
    """What one operation of a transaction returned."""
    kind = resp.WhichOneof("response")
    if kind == "response_range":
        return OpResult(kvs=tuple(kv_from_proto(kv) for kv in resp.response_range.kvs))
    if kind == "response_delete_range":
        return OpResult(deleted=resp.response_delete_range.deleted)
    return OpResult()


def leader_key_from_proto(key: electionpb.LeaderKey) -> LeaderKey:
    """Proof of leadership from etcd's message."""
    return LeaderKey(key.name.decode(), key.key.decode(errors="surrogateescape"), key.rev, key.lease)


def leader_key_to_proto(key: LeaderKey) -> electionpb.LeaderKey:
    """Proof of leadership as etcd's message."""
    return electionpb.LeaderKey(name=encode_key(key.name), key=encode_key(key.key), rev=key.revision, lease=key.lease)
