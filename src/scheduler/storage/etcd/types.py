"""The etcd client's own value types: what callers see instead of etcd's protobuf messages.

Keys are text (UTF-8 on the wire), values are bytes. Revisions are etcd's: one counter for the
whole store, bumped by every write; a key's ``mod_revision`` is the revision of its last write,
and a missing key has ``mod_revision`` 0, which is what makes create-if-absent a compare on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach an etcd cluster."""

    endpoints: tuple[str, ...]
    """Client URLs of the members (``http://127.0.0.1:2379`` or ``host:port``); tried in order."""
    dial_timeout: float = 5.0
    """Seconds one attempt at one member may take before the next member is tried."""
    retry_deadline: float = 15.0
    """Seconds a call keeps failing over between members (a leader election takes ~1-3 s)."""
    ca_file: Path | None = None
    """CA bundle to verify the members with; set (or an ``https://`` endpoint) means TLS."""
    cert_file: Path | None = None
    """Client certificate, for members that require one."""
    key_file: Path | None = None
    """Key of the client certificate."""

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("etcd needs at least one endpoint")
        if self.dial_timeout <= 0 or self.retry_deadline <= 0:
            raise ValueError("etcd timeouts must be positive")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("etcd client certificate and key go together")


@dataclass(frozen=True)
class KeyValue:
    """One key as stored, with its revisions."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class RangePage:
    """One page of a range read: the keys, whether more follow, and the revision it was read at."""

    kvs: tuple[KeyValue, ...]
    more: bool
    revision: int


class EventKind(enum.Enum):
    """What happened to a watched key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    """One change: for a DELETE, ``kv`` has the key, an empty value and the deletion's revision."""

    kind: EventKind
    kv: KeyValue
    prev: KeyValue | None = None


@dataclass(frozen=True)
class WatchBatch:
    """What a watch yields: the changes of one or more revisions, or a whole new snapshot.

    ``snapshot`` is set when the watcher (re)started from a listing (at the start when no
    revision was given, or after the history it asked for was compacted away): it holds every
    key under the prefix at ``revision``, and replaces whatever the consumer knew.
    """

    revision: int
    events: tuple[WatchEvent, ...] = ()
    snapshot: tuple[KeyValue, ...] | None = None


# --- transactions --------------------------------------------------------------------------------


class Target(enum.Enum):
    """The field of a key a comparison looks at."""

    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class Op(enum.Enum):
    """How a comparison compares."""

    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction: ``key``'s ``target`` ``op`` ``operand``."""

    key: str
    target: Target
    op: Op
    operand: int | bytes

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        """The key was last written at ``revision`` (0: the key does not exist)."""
        return cls(key, Target.MOD, Op.EQUAL, revision)

    @classmethod
    def absent(cls, key: str) -> Compare:
        """The key does not exist."""
        return cls(key, Target.CREATE, Op.EQUAL, 0)

    @classmethod
    def created_at(cls, key: str, revision: int) -> Compare:
        """The key exists and was created at ``revision`` (fencing on an ownership key)."""
        return cls(key, Target.CREATE, Op.EQUAL, revision)


@dataclass(frozen=True)
class Put:
    """Write ``value`` at ``key``, attached to ``lease`` (0: none)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """Remove ``key``, every key under it (``prefix``), or the keys from ``key`` up to ``end``."""

    key: str
    prefix: bool = False
    end: str | None = None


@dataclass(frozen=True)
class Get:
    """Read ``key``, or the keys under it when ``prefix`` is set (at most ``limit``; 0: all)."""

    key: str
    prefix: bool = False
    limit: int = 0


TxnOp = Put | Delete | Get


@dataclass(frozen=True)
class OpResult:
    """What one operation of a transaction returned: the keys read, or the number deleted."""

    kvs: tuple[KeyValue, ...] = ()
    deleted: int = 0


@dataclass(frozen=True)
class TxnResult:
    """Outcome of a transaction.

    ``ambiguous`` is set when an earlier attempt of this same transaction failed in a way that
    may have applied it (the member died or timed out after receiving it) and it was sent
    again: a failed guard may then be the transaction's own first attempt, which callers
    resolve by reading back what they wrote.
    """

    succeeded: bool
    revision: int
    results: tuple[OpResult, ...] = ()
    ambiguous: bool = False


@dataclass(frozen=True)
class CasResult:
    """Outcome of a compare-and-swap on one key: ``current`` is the key as stored after it."""

    succeeded: bool
    revision: int
    current: KeyValue | None
    ambiguous: bool = False


# --- leases, elections and the cluster ------------------------------------------------------------


@dataclass(frozen=True)
class LeaderKey:
    """Proof of leadership of an election: the key held, its creation revision and lease."""

    name: str
    key: str
    revision: int
    lease: int


@dataclass(frozen=True)
class MemberStatus:
    """What one member says about itself and the cluster (Maintenance.Status)."""

    endpoint: str
    member_id: int
    leader_id: int
    raft_term: int
    revision: int
    version: str
    errors: tuple[str, ...] = field(default=())

    @property
    def is_leader(self) -> bool:
        """Whether this member is the raft leader."""
        return self.member_id != 0 and self.member_id == self.leader_id


@dataclass(frozen=True)
class Member:
    """One member of the cluster (Cluster.MemberList)."""

    member_id: int
    name: str
    client_urls: tuple[str, ...]
    peer_urls: tuple[str, ...]
