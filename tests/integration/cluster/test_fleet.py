"""Three scheduler nodes on a real 3-member etcd cluster, each with its own containerd, in a
network namespace of its own on a test bridge (tests/support/fleet.py).

Environments created through one node land on all three by capacity (and labels) and serve a
page from each at its node's address; a node lost (SIGKILL of its daemon and its containerd, its
link down) has its environments run on the others within a bounded time, PostgreSQL with the
rows of its last backup; when the node comes back (link up, daemon restarted) it removes its
stale containers and nothing runs twice; the etcd leader killed while clients keep calling, the
API keeps answering reads, writes resume after the election, nothing acknowledged is lost and
the member rejoins; a drained node gives its environments away. Throughout, WatchEvents through
n0 streams the events of every node's environments, by etcd revision, and a watcher of the lost
node resumes from its last sequence through another node, and through that node once back.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.fleet import (
    MIB,
    NODE_MEMORY,
    Fleet,
    all_envs,
    database,
    fetch,
    rows,
    running,
    toolbox,
    url,
    wait_until,
)
from tests.support.processes import shims_of

pytestmark = pytest.mark.integration

STATELESS = 5
ROWS = ["first row", "zweite Zeile"]
NODES = {"n0", "n1", "n2"}


def workload(fleet: Fleet) -> dict[str, tuple[int, int]]:
    """Per environment, over every live node's containerd: containers, and tasks that run."""
    total: dict[str, tuple[int, int]] = {}
    for node in fleet.nodes:
        if node.alive:
            for env, (made, runs) in node.workload().items():
                total[env] = (total.get(env, (0, 0))[0] + made, total.get(env, (0, 0))[1] + runs)
    return total


@dataclass
class Traffic:
    """Clients that keep calling while etcd loses its leader: reads (ListEnvironments) round-robin
    over every node, and writes (a label of its own per write on ``target``) through them too."""

    stubs: list[pb_grpc.SchedulerServiceStub]
    target: str
    reads: list[tuple[float, int]] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    acked: list[tuple[float, int]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            stub = self.stubs[n % len(self.stubs)]
            try:
                stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=100), timeout=10)
                self.reads.append((time.monotonic(), n % len(self.stubs)))
            except grpc.RpcError as err:
                self.read_errors.append(f"{err.code()}: {err.details()}")
            spec = pb.EnvironmentSpecification(labels={f"w{n}": str(n)})
            mask = field_mask_pb2.FieldMask(paths=[f"labels.w{n}"])
            try:
                stub.UpdateEnvironment(
                    pb.UpdateEnvironmentRequest(name=self.target, spec=spec, update_mask=mask), timeout=30
                )
                self.acked.append((time.monotonic(), n))
            except grpc.RpcError as err:
                self.failed.append((n, f"{err.code()}: {err.details()}"))
            time.sleep(0.2)

    def acked_since(self, moment: float) -> int:
        return sum(1 for at, _ in self.acked if at > moment)

    def read_since(self, moment: float) -> set[int]:
        """The nodes (indexes) that answered a read after ``moment``."""
        return {i for at, i in self.reads if at > moment}


@dataclass
class Tap:
    """A WatchEvents stream read in a thread: the events received, the heartbeats apart, how it ended."""

    call: Any
    events: list[pb.Event] = field(default_factory=list)
    heartbeats: list[int] = field(default_factory=list)
    ended: str = ""
    thread: threading.Thread | None = None

    @classmethod
    def open(cls, stub: pb_grpc.SchedulerServiceStub, name: str = "", since: int | None = None) -> Tap:
        request = pb.WatchEventsRequest(name=name, heartbeat_interval=duration_pb2.Duration(seconds=1))
        if since is not None:
            request.since = since
        tap = cls(stub.WatchEvents(request, timeout=1800))
        tap.thread = threading.Thread(target=tap._read, daemon=True)
        tap.thread.start()
        return tap

    def _read(self) -> None:
        try:
            for event in self.call:
                if event.type == pb.EVENT_TYPE_HEARTBEAT:
                    self.heartbeats.append(event.sequence)
                else:
                    self.events.append(event)
        except grpc.RpcError as err:
            self.ended = f"{err.code()}: {err.details()}"

    def started(self) -> int:
        """Wait for the first heartbeat (the watch is established): the revision it starts after."""
        return wait_until(lambda: self.heartbeats[:1], "the watch is established", 30)[0]

    @property
    def position(self) -> int:
        """How far the stream went: its last event or heartbeat."""
        return max([e.sequence for e in self.events[-1:]] + self.heartbeats[-1:] + [0])

    def between(self, since: int, upto: int) -> list[tuple[int, str, int]]:
        return [(e.sequence, e.environment, e.type) for e in self.events if since < e.sequence <= upto]

    def close(self) -> None:
        self.call.cancel()
        if self.thread is not None:
            self.thread.join(10)


def resumed_alike(stub: pb_grpc.SchedulerServiceStub, since: int, reference: Tap, name: str = "") -> int:
    """Resume a watch from ``since`` through ``stub``: it replays exactly what ``reference`` (a
    watch that never stopped) saw after ``since``. Returns how many events it replayed."""
    upto = reference.position
    tap = Tap.open(stub, name, since)
    try:
        wait_until(lambda: tap.position >= upto or tap.ended, f"the resumed watch reaches {upto}", 60)
        assert tap.ended == ""
        assert tap.between(since, upto) == reference.between(since, upto)
        return len(tap.between(since, upto))
    finally:
        tap.close()


def test_a_fleet_places_by_capacity_survives_a_killed_node_and_drains(fleet: Fleet) -> None:
    stub = fleet.stub(0)
    # Watchers of the whole fleet through each node, and of one environment through n0.
    taps = [Tap.open(fleet.stub(i)) for i in range(3)] + [Tap.open(stub, "shop")]
    try:
        watched(fleet, taps)
    finally:
        for tap in taps:
            tap.close()


def watched(fleet: Fleet, taps: list[Tap]) -> None:
    first = fleet.nodes[0]
    stub = fleet.stub(0)
    every_event, shop_events = taps[0], taps[3]
    for tap in taps:
        tap.started()
    nodes = stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
    assert [n.name for n in nodes] == ["n0", "n1", "n2"] and sum(n.leader for n in nodes) == 1
    # Each node advertises its own address on the bridge (its API over TLS, with a token).
    assert [n.address for n in nodes] == [node.address for node in fleet.nodes]
    assert [n.address.split(":")[0] for n in nodes] == [node.ip for node in fleet.nodes]
    assert nodes[1].capacity.memory_bytes == NODE_MEMORY and nodes[1].labels["node.disk"] == "ssd"

    # One PostgreSQL environment (on an ssd node, by label), then stateless ones, all created
    # through n0: spread by load, they land on all three nodes.
    started = time.monotonic()
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="shop", spec=database()), timeout=30)
    names = [f"web{i}" for i in range(STATELESS)]
    for name in names:
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=toolbox(name)), timeout=30)
    every = ["shop", *names]
    envs = wait_until(lambda: running(stub, every, NODES), "every environment runs", 240)
    print(f"\nplacement and deploy of {len(every)} environments over 3 nodes: {time.monotonic() - started:.1f} s")
    by_node = {n: sorted(e.name for e in envs.values() if e.node == n) for n in sorted(NODES)}
    assert all(by_node.values()), by_node
    assert envs["shop"].node in ("n1", "n2"), by_node  # the only nodes labelled node.disk=ssd
    # Endpoints carry the node's address: each page is served from its node's namespace.
    for env in envs.values():
        assert {e.host_ip for e in env.endpoints} == {fleet.node(env.node).ip}, env
    for name in names:
        assert fetch(url(envs[name], 8080)) == f"hello from {name}"
    before = workload(fleet)
    assert set(before) == set(every) and all(made == runs > 0 for made, runs in before.values()), before
    for value in ROWS:
        fetch(url(envs["shop"], 8080) + "/items?" + urllib.parse.urlencode({"value": value}), "POST")
    assert rows(envs["shop"]) == ROWS
    # n0 streams the events of the environments n1 and n2 run too, in revision order.
    ran = wait_until(
        lambda: (
            {e.environment for e in every_event.events if e.type == pb.EVENT_TYPE_ENVIRONMENT_RUNNING} >= set(every)
            and every_event.events
        ),
        "n0 streams every node's environments running",
        30,
    )
    sequences = [e.sequence for e in ran]
    assert sequences == sorted(set(sequences)) and sequences[0] > every_event.heartbeats[0]

    # 2 GiB per node: an environment asking 3 GiB fits nowhere, and the error says what.
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="huge", spec=toolbox("huge", 3072 * MIB)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "bytes of memory" in (refused.value.details() or "")

    # The database's node backs it up (into the fleet's shared backup directory).
    owner = envs["shop"].node
    victim = fleet.node(owner)
    survivor = {"n1": "n2", "n2": "n1"}[owner]
    lost = by_node[owner]
    assert len(lost) >= 2, by_node  # the database and a stateless environment
    backup = victim.stub().BackupEnvironment(pb.BackupEnvironmentRequest(name="shop"), timeout=300)
    assert backup.databases == ["postgres"]
    fetch(url(envs["shop"], 8080) + "/items?value=after+the+backup", "POST")

    # Lose that node: its daemon and its containerd die at once (its containers' shims live on),
    # and its link goes down.
    socket = victim.containerd_socket
    victim_tap = taps[int(owner[1])]
    wait_until(lambda: victim_tap.position >= every_event.position, "the lost node's watcher is up to date", 30)
    last_seen = victim_tap.events[-1].sequence
    victim.kill()
    killed_at = time.monotonic()
    others = NODES - {owner}
    envs = wait_until(lambda: running(stub, lost, others), "the lost node's environments run elsewhere", 180)
    print(f"failover of {len(lost)} environments after SIGKILL of a node: {time.monotonic() - killed_at:.1f} s")
    assert envs["shop"].node == survivor
    for name in lost:
        placed = next(c for c in envs[name].conditions if c.type == "Placed")
        assert placed.reason == "Moved" and f"node {owner} was lost" in placed.message, placed
    # The dumps load once PostgreSQL runs; the condition says when that is done.
    restored = wait_until(
        lambda: next((c for c in all_envs(stub)["shop"].conditions if c.type == "DataRestored"), None),
        "the database is restored",
        60,
    )
    assert restored.status == pb.CONDITION_STATUS_TRUE and restored.message.startswith("data as of "), restored
    assert rows(envs["shop"]) == ROWS  # the last backup's rows; the later write was on the lost node
    for name in lost:
        if name != "shop":
            assert fetch(url(envs[name], 8080)) == f"hello from {name}"
    assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == sorted(others)
    assert shims_of(socket), "the killed node's containers still run, unreachable"
    # The lost node's watcher resumes through n0 from the last sequence it received: exactly
    # the events since (the failover's among them), as n0's own watcher saw them.
    assert resumed_alike(stub, last_seen, every_event) > 0

    # The node returns (link up, daemon restarted): it finds its environments moved and removes
    # its stale containers; across the three nodes nothing runs twice.
    victim.restart()
    wait_until(lambda: not shims_of(socket), "the returning node removed its stale containers", 60)
    envs = all_envs(stub)
    assert all(envs[n].node in others and envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING for n in lost)
    assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == ["n0", "n1", "n2"]
    assert victim.workload() == {}
    assert workload(fleet) == before
    # ... and through the lost node itself, back and restarted.
    assert resumed_alike(victim.stub(), last_seen, every_event) > 0

    leader_killed(fleet, names[0])

    # Any node serves the whole API; node-local calls name the owner to ask instead.
    third_stub = fleet.node(survivor).stub()
    assert set(all_envs(third_stub)) == set(every)
    placement = {name: e.node for name, e in envs.items()}
    elsewhere = next((e for e in envs.values() if e.node == "n0"), None)
    assert elsewhere is not None, placement
    with pytest.raises(grpc.RpcError) as wrong:
        list(third_stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name=elsewhere.name), timeout=10))
    assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"runs on node 'n0' at {first.address}" in (wrong.value.details() or "")
    metrics = stub.GetEnvironmentMetrics(pb.GetEnvironmentMetricsRequest(name=elsewhere.name), timeout=30)
    assert metrics.containers[0].memory_limit_bytes == 512 * MIB

    # Draining n0 (with the CLI, as a user would) moves its environments to the others at once.
    on_first = [n for n, e in envs.items() if e.node == "n0"]
    listed = fleet.cli(1, "node", "list")
    assert listed.returncode == 0 and first.address in listed.stdout, listed.stderr
    drained = fleet.cli(2, "node", "drain", "n0")
    assert drained.returncode == 0, drained.stderr
    assert [n.draining for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == [True, False, False]
    wait_until(lambda: running(stub, on_first, {"n1", "n2"}), "the drained node's environments moved", 90)
    wait_until(lambda: not shims_of(first.containerd_socket), "the drained node is empty", 60)

    # n0's watchers went through the node loss, its return and the etcd leader's death unbroken;
    # a heartbeat's sequence never goes back nor behind an event already sent.
    assert every_event.ended == "" and shop_events.ended == "", (every_event.ended, shop_events.ended)
    assert every_event.heartbeats == sorted(every_event.heartbeats)
    upto = min(every_event.position, shop_events.position)
    assert {e.environment for e in shop_events.events} == {"shop"}
    shop_only = [e for e in every_event.between(0, upto) if e[1] == "shop"]
    assert shop_events.between(0, upto) == shop_only and shop_only


def leader_killed(fleet: Fleet, target: str) -> None:
    """SIGKILL etcd's leader (found by Maintenance.Status) while clients keep calling every node:
    reads keep answering, writes resume after the election, every acknowledged write is there,
    nothing moved, and the member rejoins."""
    stubs = [node.stub() for node in fleet.nodes]
    placed = {name: env.node for name, env in all_envs(stubs[0]).items()}
    before = workload(fleet)
    lapsed = [node.daemon.log().count("node.lease_lost") for node in fleet.nodes]
    traffic = Traffic(stubs, target)
    caller = threading.Thread(target=traffic.run, daemon=True)
    caller.start()
    try:
        wait_until(lambda: len(traffic.acked) >= 3, "writes before the kill", 30)
        member = wait_until(fleet.etcd.leader, "etcd agrees on a leader", 30)
        fleet.etcd.kill(member)
        killed_at = time.monotonic()
        wait_until(
            lambda: traffic.acked_since(killed_at) >= 3 and traffic.read_since(killed_at) == {0, 1, 2},
            "writes resume after the election, reads from every node",
            60,
        )
    finally:
        traffic.stop.set()
        caller.join(40)
    resumed = min(at for at, _ in traffic.acked if at > killed_at) - killed_at
    print(
        f"etcd leader {member.name} killed: writes resumed after {resumed:.1f} s"
        f" ({len(traffic.failed)} failed meanwhile)"
    )
    assert traffic.read_errors == [], traffic.read_errors[:5]
    env = stubs[1].GetEnvironment(pb.GetEnvironmentRequest(name=target), timeout=10)
    missing = [n for _, n in traffic.acked if env.spec.labels.get(f"w{n}") != str(n)]
    assert missing == [], f"acknowledged writes lost: {missing}"
    assert {name: e.node for name, e in all_envs(stubs[2]).items()} == placed  # nothing moved
    # No node lost its lease meanwhile (it would have fenced itself), nothing stopped or doubled.
    assert [node.daemon.log().count("node.lease_lost") for node in fleet.nodes] == lapsed
    assert workload(fleet) == before

    fleet.etcd.restart(member)
    revision = int(
        fleet.etcd.status(fleet.etcd.members[(fleet.etcd.members.index(member) + 1) % 3])["header"]["revision"]
    )
    wait_until(
        lambda: int(fleet.etcd.status(member).get("header", {}).get("revision", 0)) >= revision,
        "the killed member rejoined and caught up",
        30,
    )
