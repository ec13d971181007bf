from datetime import UTC, datetime

import pytest

from scheduler.cluster.node import Node, Resources, demand_of, node_from_json, node_to_json, selector_of
from scheduler.cluster.placement import Strategy, load_after, place, short_of
from scheduler.domain import EnvironmentSpec, PortSpec, ServiceSpec
from scheduler.domain import Resources as ServiceResources
from scheduler.errors import Internal, ResourceExhausted

GIB = 1024**3


def node(name: str, cpu: int = 4000, mem: int = 8 * GIB, used_cpu: int = 0, used_mem: int = 0, **kw: object) -> Node:
    return Node(
        name=name,
        address=f"{name}:7000",
        capacity=Resources(cpu, mem, ports=100, environments=50),
        allocated=Resources(used_cpu, used_mem, ports=0, environments=0),
        **kw,  # type: ignore[arg-type]
    )


def ask(cpu: int = 1000, mem: int = GIB, ports: int = 1) -> Resources:
    return Resources(cpu, mem, ports, 1)


def test_spread_takes_the_least_loaded_node() -> None:
    nodes = [node("a", used_cpu=3000), node("b", used_cpu=1000), node("c", used_cpu=2000)]
    assert place(ask(), {}, nodes, Strategy.SPREAD).name == "b"


def test_pack_takes_the_most_loaded_node_that_still_fits() -> None:
    nodes = [node("a", used_cpu=3500), node("b", used_cpu=1000), node("c", used_cpu=2500)]
    # a has 500 millicores free and cannot take 1000; c is the fullest that can.
    assert place(ask(), {}, nodes, Strategy.PACK).name == "c"


def test_ties_go_to_the_name_so_placement_is_deterministic() -> None:
    assert place(ask(), {}, [node("b"), node("a"), node("c")]).name == "a"


def test_load_counts_the_busiest_resource() -> None:
    n = node("a", cpu=4000, mem=8 * GIB, used_mem=6 * GIB)
    assert load_after(ask(cpu=1000, mem=GIB), n) == pytest.approx(7 / 8)


def test_a_draining_node_takes_nothing() -> None:
    nodes = [node("a", draining=True), node("b", used_cpu=3000)]
    assert place(ask(), {}, nodes).name == "b"
    with pytest.raises(ResourceExhausted, match="no live node takes new environments") as info:
        place(ask(), {}, [node("a", draining=True)])
    assert info.value.details["quota"] == "nodes"


def test_no_node_at_all_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted, match="no live node"):
        place(ask(), {}, [], env="shop")


def test_label_affinity_keeps_only_nodes_with_every_label() -> None:
    nodes = [node("a", labels={"node.disk": "hdd"}), node("b", labels={"node.disk": "ssd", "zone": "x"})]
    assert place(ask(), {"node.disk": "ssd"}, nodes).name == "b"
    with pytest.raises(ResourceExhausted, match="no live node has the labels node.disk=nvme") as info:
        place(ask(), {"node.disk": "nvme"}, nodes)
    assert info.value.details["quota"] == "node.labels"


def test_exhausted_names_the_resource_no_node_has() -> None:
    nodes = [node("a", mem=2 * GIB), node("b", mem=4 * GIB, used_mem=3 * GIB)]
    with pytest.raises(ResourceExhausted) as info:
        place(ask(mem=3 * GIB), {}, nodes, env="shop")
    assert info.value.details["quota"] == "node.memory_bytes"
    assert "asks for 3221225472 bytes of memory" in info.value.message
    assert "most free on any live node is 2147483648" in info.value.message
    assert "'shop'" in info.value.message


def test_exhausted_on_cpu_names_cpu() -> None:
    with pytest.raises(ResourceExhausted) as info:
        place(ask(cpu=5000), {}, [node("a"), node("b")])
    assert info.value.details["quota"] == "node.cpu_millis"


def test_ports_and_environment_counts_are_capacity_too() -> None:
    full = Node("a", "a:1", Resources(4000, GIB, ports=2, environments=1), Resources(0, 0, 0, 1))
    assert short_of(ask(mem=1), full) == ["environments"]
    no_ports = Node("b", "b:1", Resources(4000, GIB, ports=2, environments=9), Resources(0, 0, 2, 0))
    assert short_of(ask(mem=1), no_ports) == ["ports"]


def test_demand_sums_replicas_and_published_ports() -> None:
    spec = EnvironmentSpec(
        stack="web",
        services=(
            ServiceSpec(
                "web",
                "nginx",
                replicas=2,
                resources=ServiceResources(cpu_millis=250, memory_bytes=100),
                ports=(PortSpec(80, publish=True), PortSpec(81)),
            ),
            ServiceSpec("db", "postgres", resources=ServiceResources(cpu_millis=500, memory_bytes=300)),
        ),
        labels={"node.disk": "ssd", "team": "x"},
    )
    assert demand_of(spec) == Resources(cpu_millis=1000, memory_bytes=500, ports=1, environments=1)
    assert selector_of(spec) == {"node.disk": "ssd"}


def test_node_record_round_trips_and_refuses_garbage() -> None:
    n = Node(
        "a",
        "10.0.0.1:7000",
        Resources(1, 2, 3, 4),
        Resources(0, 1, 0, 1),
        labels={"node.disk": "ssd"},
        pool="10.90.0.0/16",
        port_range=(20000, 20999),
        draining=True,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert node_from_json(node_to_json(n)) == n
    with pytest.raises(Internal, match="node record is malformed"):
        node_from_json('{"name": "a"}')
