"""What the placement leader does in one pass: pure, so every rule is unit-tested without etcd.

Given every environment, the live nodes, and since when each missing node has been missing:

- an environment on no node is placed (creation);
- an environment on a draining node is moved at once;
- an environment on a node missing for ``grace`` or longer is moved (node loss); before the
  grace it stays where it is, so a daemon restart or a short partition moves nothing;
- an environment being deleted whose node is gone is handed to a live node, which finishes
  the deletion.

Capacity is counted from the environments themselves (what each placed one asks for), not
from the nodes' own reports, which lag; assignments made earlier in the same pass count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from scheduler.cluster.node import Node, Resources, demand_of, selector_of
from scheduler.cluster.placement import Strategy, place
from scheduler.domain import Environment, EnvironmentStatus
from scheduler.errors import ResourceExhausted


@dataclass(frozen=True)
class Assignment:
    """Put environment ``env`` (of incarnation ``uid``) on ``node``; ``reason`` says why."""

    env: str
    uid: str
    node: str
    reason: str
    moved_from: str = ""
    """The node it ran on, when it is moved (lost or drained)."""


@dataclass(frozen=True)
class Unplaceable:
    """No live node fits environment ``env``; ``error`` names the resource."""

    env: str
    error: ResourceExhausted


def allocations(envs: Iterable[Environment], live: Iterable[str]) -> dict[str, Resources]:
    """What the environments placed on each live node ask for."""
    totals = {name: Resources() for name in live}
    for env in envs:
        if env.node in totals and env.status is not EnvironmentStatus.DELETING:
            totals[env.node] += demand_of(env.spec)
    return totals


def decide(
    envs: Iterable[Environment],
    nodes: Iterable[Node],
    missing_since: Mapping[str, datetime],
    now: datetime,
    grace: timedelta,
    strategy: Strategy = Strategy.SPREAD,
) -> tuple[list[Assignment], list[Unplaceable]]:
    """The assignments of one leader pass, and the environments no node can take now."""
    envs = list(envs)
    live = {n.name: n for n in nodes}
    used = allocations(envs, live)
    assignments: list[Assignment] = []
    unplaceable: list[Unplaceable] = []
    for env in envs:
        reason, moved_from = _why_place(env, live, missing_since, now, grace)
        if not reason:
            continue
        deleting = env.status is EnvironmentStatus.DELETING
        demand = Resources() if deleting else demand_of(env.spec)
        candidates = [replace(n, allocated=used[n.name]) for n in live.values() if n.name != moved_from]
        try:
            chosen = place(demand, {} if deleting else selector_of(env.spec), candidates, strategy, env=env.name)
        except ResourceExhausted as err:
            unplaceable.append(Unplaceable(env.name, err))
            continue
        used[chosen.name] += demand
        assignments.append(Assignment(env.name, env.uid, chosen.name, reason, moved_from))
    return assignments, unplaceable


def _why_place(
    env: Environment, live: Mapping[str, Node], missing_since: Mapping[str, datetime], now: datetime, grace: timedelta
) -> tuple[str, str]:
    if not env.node:
        return "placed", ""
    node = live.get(env.node)
    if node is not None:
        return (f"node {env.node} is draining", env.node) if node.draining else ("", "")
    since = missing_since.get(env.node, now)
    if now - since >= grace:
        return f"node {env.node} was lost at {since.isoformat(timespec='seconds')}", env.node
    return "", ""
