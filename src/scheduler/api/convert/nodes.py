"""Fleet nodes in their wire form (ListNodes, DrainNode)."""

from __future__ import annotations

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api.convert.scalars import time_to_proto
from scheduler.cluster.node import Node, Resources


def node_to_proto(node: Node) -> pb.Node:
    """Convert a fleet node to its wire form."""
    return pb.Node(
        name=node.name,
        address=node.address,
        capacity=_resources_to_proto(node.capacity),
        allocated=_resources_to_proto(node.allocated),
        labels=dict(node.labels),
        network_pool=node.pool,
        port_range_start=node.port_range[0],
        port_range_end=node.port_range[1],
        draining=node.draining,
        leader=node.leader,
        start_time=time_to_proto(node.started_at),
    )


def _resources_to_proto(res: Resources) -> pb.NodeResources:
    return pb.NodeResources(
        cpu_millis=res.cpu_millis,
        memory_bytes=res.memory_bytes,
        published_ports=res.ports,
        environments=res.environments,
    )
