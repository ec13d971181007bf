"""Leader election through etcd's own Election service (v3election), held by a lease.

Campaign blocks until this candidate leads, and is redone on the next member when the one it
waits on dies (etcd keys the candidacy by lease, so a retry is the same candidacy). Leadership
lasts while the candidate's lease lives: watch ``Lease.lost``, and fence writes on the leader
key with ``Compare.created_at(leader.key, leader.revision)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from scheduler import log
from scheduler.errors import Internal
from scheduler.storage.etcd import convert
from scheduler.storage.etcd._gen.etcd.api.v3electionpb import v3election_pb2 as electionpb
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.connection import REQUIRE_LEADER
from scheduler.storage.etcd.errors import from_grpc, retryable
from scheduler.storage.etcd.types import KeyValue, LeaderKey

_log = log.get("etcd.election")


class Election:
    """One named election (its candidates' keys live under ``name``)."""

    def __init__(self, client: EtcdClient, name: str) -> None:
        self.client = client
        self.name = name
        self._raw = convert.encode_key(name)

    async def campaign(self, lease: int, value: bytes) -> LeaderKey:
        """Wait until the candidate holding ``lease`` leads, proclaiming ``value``; cancel to give up."""
        request = electionpb.CampaignRequest(name=self._raw, lease=lease, value=value)
        response: electionpb.CampaignResponse = await self.client.call(
            f"Campaign {self.name}",
            lambda s, t: s.election.Campaign(request, timeout=t, metadata=REQUIRE_LEADER),
            attempt_timeout=None,
        )
        return convert.leader_key_from_proto(response.leader)

    async def proclaim(self, leader: LeaderKey, value: bytes) -> None:
        """Replace the value the leader proclaims (FailedPrecondition if it no longer leads)."""
        request = electionpb.ProclaimRequest(leader=convert.leader_key_to_proto(leader), value=value)
        await self.client.call(
            f"Proclaim {self.name}", lambda s, t: s.election.Proclaim(request, timeout=t, metadata=REQUIRE_LEADER)
        )

    async def resign(self, leader: LeaderKey) -> None:
        """Give up leadership so the next candidate leads."""
        request = electionpb.ResignRequest(leader=convert.leader_key_to_proto(leader))
        await self.client.call(
            f"Resign {self.name}", lambda s, t: s.election.Resign(request, timeout=t, metadata=REQUIRE_LEADER)
        )

    async def leader(self) -> KeyValue | None:
        """The current leader's key and proclaimed value; None when nobody leads."""
        request = electionpb.LeaderRequest(name=self._raw)
        try:
            response: electionpb.LeaderResponse = await self.client.call(
                f"Leader {self.name}", lambda s, t: s.election.Leader(request, timeout=t, metadata=REQUIRE_LEADER)
            )
        except Internal as err:
            if "election: no leader" in str(err):
                return None
            raise
        return convert.kv_from_proto(response.kv)

    async def observe(self) -> AsyncIterator[KeyValue]:
        """Yield each leader's proclamation as it is made, the current one first; forever.

        A member failure reopens the stream on the next member; a proclamation seen already is
        not yielded twice.
        """
        last = 0
        delay = 0.05
        while True:
            stubs = self.client.stubs()
            call = stubs.election.Observe(electionpb.LeaderRequest(name=self._raw), metadata=REQUIRE_LEADER)
            try:
                async for response in call:
                    kv = convert.kv_from_proto(response.kv)
                    if kv.mod_revision <= last:
                        continue
                    last = kv.mod_revision
                    delay = 0.05
                    yield kv
            except grpc.RpcError as err:
                if not retryable(err) and "no leader" not in str(err):
                    raise from_grpc(err, f"Observe {self.name}") from err
                _log.info("etcd.election.reconnect", election=self.name, endpoint=stubs.endpoint, error=str(err))
                self.client.fail_over(stubs)
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
