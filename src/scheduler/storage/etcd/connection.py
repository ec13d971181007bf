"""One gRPC channel to one etcd member, and the etcd services on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from scheduler.storage.etcd._gen.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from scheduler.storage.etcd._gen.etcd.api.v3electionpb import v3election_pb2_grpc as election_rpc
from scheduler.storage.etcd.types import EtcdOptions

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A member that comes back is found again within a second, not after grpc's default 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

REQUIRE_LEADER = (("hasleader", "true"),)
"""Metadata asking a member to refuse a call at once (and end a stream) while it has no leader, so
the call is redone after the election (or elsewhere) instead of waiting out its timeout."""


@dataclass
class Stubs:
    """The etcd services on one member's channel."""

    endpoint: str
    channel: grpc.aio.Channel
    kv: rpc.KVAsyncStub
    watch: rpc.WatchAsyncStub
    lease: rpc.LeaseAsyncStub
    cluster: rpc.ClusterAsyncStub
    maintenance: rpc.MaintenanceAsyncStub
    election: election_rpc.ElectionAsyncStub


def target(endpoint: str) -> tuple[str, bool]:
    """``host:port`` of an endpoint URL, and whether it asks for TLS."""
    for scheme, tls in (("https://", True), ("http://", False), ("unixs://", True), ("unix://", False)):
        if endpoint.startswith(scheme):
            rest = endpoint[len(scheme) :].rstrip("/")
            return (f"unix:{rest}" if scheme.startswith("unix") else rest), tls
    return endpoint.rstrip("/"), False


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def connect(endpoint: str, options: EtcdOptions) -> Stubs:
    """Open a channel to the member at ``endpoint`` (TLS for https:// or when a CA is given)."""
    address, tls = target(endpoint)
    if tls or options.ca_file is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(options.ca_file),
            private_key=_read(options.key_file),
            certificate_chain=_read(options.cert_file),
        )
        channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return Stubs(
        endpoint,
        channel,
        rpc.KVStub(channel),
        rpc.WatchStub(channel),
        rpc.LeaseStub(channel),
        rpc.ClusterStub(channel),
        rpc.MaintenanceStub(channel),
        election_rpc.ElectionStub(channel),
    )
