"""Fleet operations on two real nodes (each in a network namespace of its own) over a real etcd.

Undrain, and the fence of a node cut off from etcd: an iptables chain of the test's own in n1's
namespace drops its traffic to the etcd members, as a partition would; n0 and the clients still
reach it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from tests.support.fleet import TOOLBOX, Fleet, all_envs, fetch, running, start_fleet, toolbox, url, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[Fleet]:
    """n0 (no labels) and n1 (``node.disk=ssd``)."""
    with start_fleet(tmp_path_factory.mktemp("fleet-ops"), [image_archives[TOOLBOX]], size=2) as made:
        yield made


def partition(fleet: Fleet, index: int, *, cut: bool) -> None:
    """Drop (or stop dropping) node ``index``'s traffic to every etcd member, in its own namespace."""
    chain = f"{fleet.net.prefix}-etcd-cut"
    ports = ",".join(e.rsplit(":", 1)[1] for e in fleet.etcd.endpoints)

    def iptables(*args: str) -> None:
        command = ["ip", "netns", "exec", fleet.net.netns(index), "iptables", "-w", *args]
        subprocess.run(command, check=True, capture_output=True, timeout=30)

    if cut:
        iptables("-N", chain)
        iptables("-A", chain, "-p", "tcp", "-d", fleet.net.host_ip, "-m", "multiport", "--dports", ports, "-j", "DROP")
        iptables("-I", "OUTPUT", "-j", chain)
    else:
        iptables("-D", "OUTPUT", "-j", chain)
        iptables("-F", chain)
        iptables("-X", chain)


def on_ssd(name: str) -> pb.EnvironmentSpecification:
    spec = toolbox(name)
    spec.labels["node.disk"] = "ssd"
    return spec


def test_a_node_cut_off_from_etcd_stops_its_tasks_and_resumes_what_stayed_its_own(fleet: Fleet) -> None:
    n0, n1 = fleet.nodes
    stub = fleet.stub(0)

    # Drained, n0 takes nothing: both environments land on n1. Undrained, it takes new ones again.
    assert stub.DrainNode(pb.DrainNodeRequest(node="n0"), timeout=10).draining
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="pinned", spec=on_ssd("pinned")), timeout=30)
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="roamer", spec=toolbox("roamer")), timeout=30)
    wait_until(lambda: running(stub, ["pinned", "roamer"], {"n1"}), "both run on n1", 120)
    assert not stub.UndrainNode(pb.UndrainNodeRequest(node="n0"), timeout=10).draining
    assert [n.draining for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == [False, False]
    assert n1.workload() == {"pinned": (1, 1), "roamer": (1, 1)}

    # Cut off, n1 stops its tasks once its lease must have lapsed, before n0 runs the roamer.
    partition(fleet, 1, cut=True)
    try:
        wait_until(lambda: n1.workload() == {"pinned": (1, 0), "roamer": (1, 0)}, "n1 stopped its tasks", 60)
        envs = wait_until(lambda: running(stub, ["roamer"], {"n0"}), "the roamer runs on n0", 90)
        assert fetch(url(envs["roamer"], 8080)) == "hello from roamer"
        assert n1.workload()["roamer"] == (1, 0)  # nothing runs twice
        assert all_envs(stub)["pinned"].node == "n1"  # only n1 has its label: it stays placed there
    finally:
        partition(fleet, 1, cut=False)

    # Back in touch, n1 learns the roamer moved (and removes its container) and starts the
    # pinned one again.

    def pinned_back() -> pb.Environment | None:
        env = all_envs(stub)["pinned"]
        woken = any(c.type == "Sleeping" and c.reason == "Started" for c in env.conditions)
        return env if env.status == pb.ENVIRONMENT_STATUS_RUNNING and woken else None

    pinned = wait_until(pinned_back, "n1 started the pinned environment again", 90)
    assert fetch(url(pinned, 8080)) == "hello from pinned"
    wait_until(lambda: n1.workload() == {"pinned": (1, 1)}, "n1 runs the pinned environment only", 30)
    assert n0.workload() == {"roamer": (1, 1)}
    assert fetch(url(all_envs(fleet.stub(1))["roamer"], 8080)) == "hello from roamer"
