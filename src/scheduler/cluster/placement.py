"""Choosing a node for an environment: pure logic, no I/O (the leader feeds it etcd's view).

Like Nomad's bin-packing and Kubernetes' scheduler filters: a node is a candidate when its
lease is alive, it is not draining, it carries every label the environment selects on, and
its free capacity covers the environment's demand on every counted resource. Among
candidates, ``spread`` picks the least loaded (its busiest resource, as a fraction of
capacity, after placement), ``pack`` the most loaded that still fits; ties go to the name.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from scheduler.cluster.node import RESOURCE_NAMES, Node, Resources
from scheduler.errors import ResourceExhausted


class Strategy(enum.Enum):
    """How the leader chooses among nodes that fit."""

    SPREAD = "spread"
    PACK = "pack"


def place(
    demand: Resources,
    selector: Mapping[str, str],
    nodes: Iterable[Node],
    strategy: Strategy = Strategy.SPREAD,
    *,
    env: str = "",
) -> Node:
    """Return the node an environment asking for ``demand`` should run on.

    ``nodes`` are those with a live lease; the caller never passes a lapsed one.

    Raises:
        ResourceExhausted: no node fits; the message names the resource (or the label, or the
            lack of a live node) that ruled the last ones out, ``details['quota']`` names it.
    """
    live = [n for n in nodes if not n.draining]
    if not live:
        raise ResourceExhausted(
            f"environment {env!r} cannot be placed: no live node takes new environments (all are draining or "
            "their leases lapsed)",
            quota="nodes",
            env=env,
        )
    labelled = [n for n in live if all(n.labels.get(k) == v for k, v in selector.items())]
    if not labelled:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        raise ResourceExhausted(
            f"environment {env!r} cannot be placed: no live node has the labels {wanted}",
            quota="node.labels",
            env=env,
        )
    fitting = [n for n in labelled if not short_of(demand, n)]
    if not fitting:
        raise _exhausted(demand, labelled, env)
    sign = 1 if strategy is Strategy.SPREAD else -1
    return min(fitting, key=lambda n: (sign * load_after(demand, n), n.name))


def short_of(demand: Resources, node: Node) -> list[str]:
    """The resources (field names) of which ``node`` has less free than ``demand`` asks."""
    free = node.free
    return [name for name in RESOURCE_NAMES if getattr(demand, name) > getattr(free, name)]


def load_after(demand: Resources, node: Node) -> float:
    """The node's busiest resource, as a fraction of its capacity, once ``demand`` is added."""
    used = node.allocated + demand
    fractions = [
        getattr(used, name) / getattr(node.capacity, name)
        for name in RESOURCE_NAMES
        if getattr(node.capacity, name) > 0
    ]
    return max(fractions, default=0.0)


def _exhausted(demand: Resources, nodes: list[Node], env: str) -> ResourceExhausted:
    # Name a resource no node has enough of, if there is one; otherwise the one most often short.
    shortages = [short_of(demand, n) for n in nodes]
    counts = {name: sum(name in s for s in shortages) for name in RESOURCE_NAMES}
    name = max(RESOURCE_NAMES, key=lambda k: counts[k])
    most_free = max(getattr(n.free, name) for n in nodes)
    what = RESOURCE_NAMES[name]
    return ResourceExhausted(
        f"environment {env!r} asks for {getattr(demand, name)} {what}; the most free on any live node is "
        f"{max(most_free, 0)} (nodes short of {what}: {counts[name]} of {len(nodes)})",
        quota=f"node.{name}",
        env=env,
    )
