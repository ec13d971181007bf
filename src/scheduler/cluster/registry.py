"""Nodes in etcd: each node's record under its own lease, the drain marks, the fleet's view.

Keys under the fleet's prefix (``cluster.etcd.prefix``):

- ``nodes/<name>``: the node's record (JSON, :func:`node_to_json`), attached to its lease. It
  disappears on its own when the lease lapses (the daemon, its host or its link died), which is
  how every other node learns of the loss; a node that shuts down cleanly revokes it at once.
- ``drain/<name>``: present while node ``<name>`` is drained. It is not leased, so a drain
  outlives the node's restarts (as ``kubectl cordon`` does) until removed.
- ``leader``: the placement leader's election (etcd's v3election); its value is the node's name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

from scheduler import log
from scheduler.cluster.node import Node, Resources, demand_of, node_from_json, node_to_json, selector_of
from scheduler.cluster.placement import place
from scheduler.domain import Environment, EnvironmentSpec
from scheduler.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from scheduler.storage.etcd import Election, EtcdClient, Lease

_log = log.get("cluster.registry")

NODES = "nodes/"
DRAINS = "drain/"
ELECTION = "leader"


class NodeRegistry:
    """This node's registration, kept up to date: its allocation, and a new lease if one is lost."""

    def __init__(
        self, client: EtcdClient, prefix: str, node: Node, ttl: int, allocated: Callable[[], Resources]
    ) -> None:
        self._client = client
        self._key = f"{prefix}{NODES}{node.name}"
        self._node = node
        self._ttl = ttl
        self._allocated = allocated
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.registered = asyncio.Event()
        """Set while the record is in etcd under a live lease."""

    @property
    def lease(self) -> Lease:
        """The lease the record hangs on (an election campaign may hang on it too)."""
        assert self._lease is not None, "join() first"
        return self._lease

    async def join(self) -> None:
        """Register under a new lease; wait (at most two granted TTLs and a bit) for a predecessor's to lapse.

        Raises:
            AlreadyExists: another live daemon holds this node name.
        """
        await self._register(wait=self._ttl + 2.0)
        self._task = asyncio.create_task(self._keep(), name=f"node-registry-{self._node.name}")

    def changed(self) -> None:
        """Say the allocation may have changed: the record is rewritten soon."""
        self._changed.set()

    async def close(self) -> None:
        """Leave the fleet: the record goes at once (the lease is revoked)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.close()
        self.registered.clear()

    async def _register(self, wait: float) -> None:
        loop = asyncio.get_running_loop()
        lease = await Lease.grant(self._client, self._ttl)
        # etcd may grant more than asked (its minimum TTL follows the election timeout), checks
        # expiry every half second and renews every lease once more when its leader changes: a
        # predecessor's lease can outlive one TTL by a good deal on a busy host.
        deadline = loop.time() + max(wait, 2 * lease.ttl + 2.0)
        try:
            while True:
                result = await self._client.cas(self._key, self._record(), 0, lease=lease.id)
                if result.succeeded or (result.current is not None and result.current.lease == lease.id):
                    break
                if loop.time() > deadline:
                    raise AlreadyExists(
                        f"node name {self._node.name!r} is held by a live daemon (etcd key {self._key}); "
                        "give this one another cluster.node.name",
                        node=self._node.name,
                    )
                # A killed predecessor of ours (same name) still holds it until its lease lapses.
                await asyncio.sleep(0.5)
        except BaseException:
            await lease.close()
            raise
        self._lease = lease
        self.registered.set()
        _log.info("node.registered", node=self._node.name, lease=f"{lease.id:x}", ttl=self._ttl)

    def _record(self) -> bytes:
        return node_to_json(replace(self._node, allocated=self._allocated())).encode()

    async def _keep(self) -> None:
        written = self._record()
        while True:
            lease = self.lease
            lost = asyncio.ensure_future(lease.lost.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({lost, changed}, timeout=self._ttl, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                changed.cancel()
            self._changed.clear()
            try:
                if lease.lost.is_set():
                    self.registered.clear()
                    _log.warning("node.lease_lost", node=self._node.name)
                    await self._register(wait=self._ttl + 2.0)
                    written = self._record()
                    continue
                record = self._record()
                if record != written:
                    await self._client.put(self._key, record, lease=lease.id)
                    written = record
            except Exception as err:  # keep trying: the node must come back when etcd does
                _log.warning("node.update_failed", node=self._node.name, error=str(err))
                await asyncio.sleep(1.0)


class EtcdFleet:
    """The fleet as etcd holds it: every live node's record, drain marks and the leader."""

    def __init__(self, client: EtcdClient, prefix: str, local: str = "") -> None:
        self._client = client
        self._local = local
        self._prefix = prefix
        self.election = Election(client, f"{prefix}{ELECTION}")

    async def nodes(self) -> list[Node]:
        """Every node whose lease is alive, by name, with its drain mark and leadership."""
        page = await self._client.list_prefix(f"{self._prefix}{NODES}")
        drained = await self._drained()
        leader = await self.election.leader()
        leading = leader.value.decode() if leader is not None else ""
        nodes = [node_from_json(kv.value) for kv in page.kvs]
        return sorted(
            (replace(n, draining=n.name in drained, leader=n.name == leading) for n in nodes), key=lambda n: n.name
        )

    async def admit(self, name: str, spec: EnvironmentSpec) -> None:
        """Refuse ``spec`` when no live, undrained node reports room for it (the leader decides later).

        Raises:
            ResourceExhausted: naming the resource or label no node offers.
        """
        place(demand_of(spec), selector_of(spec), await self.nodes(), env=name)

    async def here(self, name: str, spec: EnvironmentSpec) -> str:
        """This node's name, for an environment that must be placed on it; refused when it has no room.

        Raises:
            ResourceExhausted: this node is draining, lacks a label, or is short of a resource (named).
        """
        mine = [n for n in await self.nodes() if n.name == self._local]
        try:
            place(demand_of(spec), selector_of(spec), mine, env=name)
        except ResourceExhausted as err:
            raise ResourceExhausted(
                f"environment {name!r} must be placed on node {self._local!r} (its volumes are made there), "
                f"which cannot take it: {err.message}",
                quota=err.details.get("quota", ""),
                env=name,
                node=self._local,
            ) from err
        return self._local

    async def check_local(self, env: Environment, why: str = "ask that node for its logs and metrics") -> None:
        """Refuse node-local work (logs, metrics, clones) about an environment placed on another node.

        The error names the owner's API address, for the client to ask it instead.

        Raises:
            FailedPrecondition: reason ``WRONG_NODE``.
        """
        if not env.node or env.node == self._local:
            return
        kv = await self._client.get(f"{self._prefix}{NODES}{env.node}")
        address = node_from_json(kv.value).address if kv is not None else ""
        where = f"at {address}" if address else "(not live now)"
        raise FailedPrecondition(
            f"environment {env.name!r} runs on node {env.node!r} {where}: {why}",
            reason="WRONG_NODE",
            env=env.name,
            node=env.node,
            address=address,
        )

    async def drain(self, name: str) -> Node:
        """Mark node ``name`` draining (until :meth:`undrain`).

        Raises:
            NotFound: no live node has that name.
        """
        node = await self._live(name)
        await self._client.put(f"{self._prefix}{DRAINS}{name}", b"")
        _log.info("node.drained", node=name)
        return replace(node, draining=True)

    async def undrain(self, name: str) -> Node:
        """Let node ``name`` take new environments again (Kubernetes' uncordon).

        Raises:
            NotFound: no live node has that name.
        """
        node = await self._live(name)
        if await self._client.delete(f"{self._prefix}{DRAINS}{name}"):
            _log.info("node.undrained", node=name)
        return replace(node, draining=False)

    async def _live(self, name: str) -> Node:
        kv = await self._client.get(f"{self._prefix}{NODES}{name}")
        if kv is None:
            raise NotFound(f"node {name!r} not found among the live nodes", node=name)
        return node_from_json(kv.value)

    async def _drained(self) -> set[str]:
        page = await self._client.list_prefix(f"{self._prefix}{DRAINS}")
        return {kv.key.removeprefix(f"{self._prefix}{DRAINS}") for kv in page.kvs}
