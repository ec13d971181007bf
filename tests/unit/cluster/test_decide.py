from datetime import UTC, datetime, timedelta

from scheduler.cluster.decide import allocations, decide
from scheduler.cluster.node import Node, Resources
from scheduler.domain import Environment, EnvironmentSpec, EnvironmentStatus, ServiceSpec
from scheduler.domain import Resources as ServiceResources

GIB = 1024**3
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
GRACE = timedelta(seconds=20)


def node(name: str, mem: int = 4 * GIB, draining: bool = False) -> Node:
    return Node(name, f"{name}:1", Resources(4000, mem, 100, 50), draining=draining)


def env(name: str, on: str = "", mem: int = GIB, status: EnvironmentStatus = EnvironmentStatus.RUNNING) -> Environment:
    spec = EnvironmentSpec("web", (ServiceSpec("web", "nginx", resources=ServiceResources(100, 0, mem)),))
    return Environment(name, f"uid-{name}", spec, status=status, node=on)


def test_unplaced_environments_are_spread_counting_earlier_assignments_of_the_pass() -> None:
    done, stuck = decide([env("a"), env("b"), env("c")], [node("n1"), node("n2")], {}, NOW, GRACE)
    assert [(a.env, a.node, a.reason) for a in done] == [
        ("a", "n1", "placed"),
        ("b", "n2", "placed"),
        ("c", "n1", "placed"),
    ]
    assert stuck == []


def test_placed_environments_on_live_nodes_stay_and_count_against_capacity() -> None:
    envs = [env("big", on="n1", mem=3 * GIB), env("new", mem=2 * GIB)]
    done, _ = decide(envs, [node("n1"), node("n2")], {}, NOW, GRACE)
    assert [(a.env, a.node) for a in done] == [("new", "n2")]
    assert allocations(envs, ["n1", "n2"])["n1"].memory_bytes == 3 * GIB


def test_a_lost_node_keeps_its_environments_until_the_grace_has_passed() -> None:
    envs = [env("a", on="gone")]
    early, _ = decide(envs, [node("n1")], {"gone": NOW - timedelta(seconds=5)}, NOW, GRACE)
    assert early == []
    late, _ = decide(envs, [node("n1")], {"gone": NOW - timedelta(seconds=25)}, NOW, GRACE)
    assert [(a.env, a.node, a.moved_from) for a in late] == [("a", "n1", "gone")]
    assert late[0].reason.startswith("node gone was lost at 2026-01-01T11:59:35")


def test_a_draining_node_gives_its_environments_away_at_once_and_takes_none() -> None:
    envs = [env("a", on="n1"), env("b")]
    done, _ = decide(envs, [node("n1", draining=True), node("n2")], {}, NOW, GRACE)
    assert [(a.env, a.node, a.moved_from) for a in done] == [("a", "n2", "n1"), ("b", "n2", "")]


def test_no_room_leaves_the_environment_unplaced_with_the_resource_named() -> None:
    done, stuck = decide([env("huge", mem=8 * GIB)], [node("n1"), node("n2")], {}, NOW, GRACE)
    assert done == [] and [s.env for s in stuck] == ["huge"]
    assert stuck[0].error.details["quota"] == "node.memory_bytes"


def test_a_deletion_on_a_lost_node_is_finished_by_a_live_one_even_a_full_one() -> None:
    envs = [env("x", on="gone", status=EnvironmentStatus.DELETING), env("fill", on="n1", mem=4 * GIB)]
    done, _ = decide(envs, [node("n1")], {"gone": NOW - GRACE}, NOW, GRACE)
    assert [(a.env, a.node) for a in done] == [("x", "n1")]
