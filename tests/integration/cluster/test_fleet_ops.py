"""Fleet operations on two real nodes over a real etcd: undrain, fencing of a node cut off from etcd.

Node n1 reaches etcd only through relays on loopback (tests/support/relay.py), so the test can
cut it off alone: every process of the test shares one network namespace, where a firewall rule
could not tell its traffic from n0's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from tests.support.daemon import start_daemon
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    TOOLBOX,
    Fleet,
    FleetNode,
    all_envs,
    fetch,
    node_config,
    running,
    start_fleet,
    toolbox,
    url,
    wait_until,
)
from tests.support.processes import shims_of
from tests.support.relay import Relay, relays

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cut_fleet(
    tmp_path_factory: pytest.TempPathFactory, etcd_cluster: EtcdCluster, image_archives: dict[str, Path]
) -> Iterator[tuple[Fleet, list[Relay]]]:
    """n0 (no labels) on etcd directly, n1 (``node.disk=ssd``) through relays the test can cut."""
    tmp = tmp_path_factory.mktemp("fleet-ops")
    prefix = f"/test-{tmp.name}/"
    archives = [image_archives[TOOLBOX]]
    with relays(list(etcd_cluster.endpoints)) as cuttable, start_fleet(tmp, etcd_cluster, prefix, archives, 1) as fleet:
        sub = tmp / "n1"
        sub.mkdir()
        config = node_config(1, etcd_cluster, prefix, fleet.backup_dir, archives, {})
        config["cluster"]["etcd"]["endpoints"] = [r.endpoint for r in cuttable]
        fleet.nodes.append(FleetNode(1, start_daemon(sub, config)))
        yield fleet, cuttable


def on_ssd(name: str) -> pb.EnvironmentSpecification:
    spec = toolbox(name)
    spec.labels["node.disk"] = "ssd"
    return spec


def test_a_node_cut_off_from_etcd_stops_its_tasks_and_resumes_what_stayed_its_own(cut_fleet) -> None:
    fleet, cuttable = cut_fleet
    n0, n1 = fleet.nodes
    stub = fleet.stub(0)

    # Drained, n0 takes nothing: both environments land on n1. Undrained, it takes new ones again.
    assert stub.DrainNode(pb.DrainNodeRequest(node="n0"), timeout=10).draining
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="pinned", spec=on_ssd("pinned")), timeout=30)
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="roamer", spec=toolbox("roamer")), timeout=30)
    wait_until(lambda: running(stub, ["pinned", "roamer"], {"n1"}), "both run on n1", 120)
    assert not stub.UndrainNode(pb.UndrainNodeRequest(node="n0"), timeout=10).draining
    assert [n.draining for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == [False, False]
    assert len(shims_of(n1.containerd_socket)) == 2

    # Cut off, n1 stops its tasks once its lease must have lapsed, before n0 runs the roamer.
    for relay in cuttable:
        relay.cut()
    wait_until(lambda: not shims_of(n1.containerd_socket), "n1 stopped the tasks of its environments", 60)
    envs = wait_until(lambda: running(stub, ["roamer"], {"n0"}), "the roamer runs on n0", 90)
    assert fetch(url(envs["roamer"], 8080)) == "hello from roamer"
    assert not shims_of(n1.containerd_socket)  # nothing runs twice
    assert all_envs(stub)["pinned"].node == "n1"  # only n1 has its label: it stays placed there

    # Back in touch, n1 learns the roamer moved (and removes its container) and starts the
    # pinned one again.
    for relay in cuttable:
        relay.restore()

    def pinned_back() -> pb.Environment | None:
        env = all_envs(stub)["pinned"]
        woken = any(c.type == "Sleeping" and c.reason == "Started" for c in env.conditions)
        return env if env.status == pb.ENVIRONMENT_STATUS_RUNNING and woken else None

    pinned = wait_until(pinned_back, "n1 started the pinned environment again", 90)
    assert fetch(url(pinned, 8080)) == "hello from pinned"
    wait_until(lambda: len(shims_of(n1.containerd_socket)) == 1, "n1 runs the pinned environment only", 30)
    assert len(shims_of(n0.containerd_socket)) == 1
    assert fetch(url(all_envs(fleet.stub(1))["roamer"], 8080)) == "hello from roamer"
