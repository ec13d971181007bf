"""Fleet operations on two real nodes (each in a network namespace of its own) over a real etcd.

Undrain; stop, start, clone, delete with keep_volumes and restore asked of a node that does not
run the environment; placement by requests; and the fence of a node cut off from etcd: an
iptables chain of the test's own in n1's namespace drops its traffic to the etcd members, as a
partition would, while n0 and the clients still reach it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from tests.support.fleet import MIB, TOOLBOX, Fleet, all_envs, fetch, running, start_fleet, toolbox, url, wait_until

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
    undrained = fleet.cli(1, "node", "undrain", "n0", "-o", "json")  # as a user would, through n1
    assert undrained.returncode == 0, undrained.stderr
    shown = json.loads(undrained.stdout)
    assert shown["name"] == "n0" and not shown.get("draining"), shown
    assert not stub.UndrainNode(pb.UndrainNodeRequest(node="n0"), timeout=10).draining  # again: no change
    assert [n.draining for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == [False, False]
    assert n1.workload() == {"pinned": (1, 1), "roamer": (1, 1)}

    # Cut off, n1 stops its tasks once its lease must have lapsed, before n0 runs the roamer.
    partition(fleet, 1, cut=True)
    cut_at = time.monotonic()
    try:
        wait_until(lambda: n1.workload() == {"pinned": (1, 0), "roamer": (1, 0)}, "n1 stopped its tasks", 60)
        fenced_after = time.monotonic() - cut_at
        envs = wait_until(lambda: running(stub, ["roamer"], {"n0"}), "the roamer runs on n0", 90)
        moved_after = time.monotonic() - cut_at
        print(f"\ncut off: tasks stopped after {fenced_after:.1f} s, moved one running after {moved_after:.1f} s")
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


def with_volume(name: str, spec: pb.EnvironmentSpecification) -> pb.EnvironmentSpecification:
    spec.services["toolbox"].volumes.append(pb.VolumeMount(name="data", path="/data"))
    return spec


def test_operations_asked_of_a_node_that_does_not_run_the_environment(fleet: Fleet) -> None:
    n0, n1 = fleet.nodes
    stub0, stub1 = fleet.stub(0), fleet.stub(1)
    # A CPU limit of 4 cores with no request reserves the default request (250m); a memory
    # request reserves less than the limit.
    spec = with_volume("vol", on_ssd("vol"))
    spec.services["toolbox"].resources.cpu_millis = 4000
    spec.services["toolbox"].resources.memory_request_bytes = 256 * MIB
    before = {n.name: n.allocated for n in stub0.ListNodes(pb.ListNodesRequest(), timeout=10).nodes}
    created = stub0.CreateEnvironment(pb.CreateEnvironmentRequest(name="vol", spec=spec), timeout=30)
    resolved = next(s.config.resources for s in created.services if s.name == "toolbox")
    assert (resolved.cpu_millis, resolved.cpu_request_millis, resolved.memory_request_bytes) == (4000, 250, 256 * MIB)
    wait_until(lambda: running(stub0, ["vol"], {"n1"}), "vol runs on n1", 120)

    def reserved() -> bool:
        now = {n.name: n.allocated for n in stub0.ListNodes(pb.ListNodesRequest(), timeout=10).nodes}
        return (now["n1"].cpu_millis - before["n1"].cpu_millis, now["n1"].memory_bytes - before["n1"].memory_bytes) == (
            250,
            256 * MIB,
        )

    wait_until(reserved, "n1 reserves vol's requests, not its limits", 30)

    # Stop and start asked of n0 are carried out by n1, which runs it.
    stub0.StopEnvironment(pb.StopEnvironmentRequest(name="vol"), timeout=30)
    wait_until(
        lambda: all_envs(stub0)["vol"].status == pb.ENVIRONMENT_STATUS_STOPPED and n1.workload()["vol"] == (1, 0),
        "n1 stopped vol",
        60,
    )
    stub0.StartEnvironment(pb.StartEnvironmentRequest(name="vol"), timeout=30)
    envs = wait_until(lambda: running(stub0, ["vol"], {"n1"}), "n1 started vol again", 60)
    assert fetch(url(envs["vol"], 8080)) == "hello from vol"

    # A clone is made where its source's volumes are: asked of n0, it names n1; n1 makes it
    # there, or refuses when it has no room (even though n0 has).
    with pytest.raises(grpc.RpcError) as wrong:
        stub0.CloneEnvironment(pb.CloneEnvironmentRequest(source="vol", name="copy"), timeout=30)
    assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"runs on node 'n1' at {n1.address}" in (wrong.value.details() or "")
    big = pb.EnvironmentSpecification(
        stack="toolbox",
        services={"toolbox": pb.ContainerConfiguration(resources=pb.Resources(memory_bytes=1536 * MIB))},
    )
    with pytest.raises(grpc.RpcError) as full:
        stub1.CloneEnvironment(
            pb.CloneEnvironmentRequest(
                source="vol",
                name="big",
                spec=big,
                update_mask=field_mask_pb2.FieldMask(paths=["services.toolbox.resources"]),
            ),
            timeout=30,
        )
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "must be placed on node 'n1'" in (full.value.details() or ""), full.value.details()
    copy = stub1.CloneEnvironment(pb.CloneEnvironmentRequest(source="vol", name="copy"), timeout=60)
    assert copy.node == "n1"
    wait_until(lambda: running(stub0, ["copy"], {"n1"}), "the copy runs on n1", 120)

    # keep_volumes asked of n0 is honoured by n1, which removes the rest.
    stub0.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="copy", keep_volumes=True), timeout=30)
    wait_until(lambda: "copy" not in all_envs(stub0) and "copy" not in n1.workload(), "copy is deleted", 60)
    assert (n1.data_dir / "volumes" / "copy" / "data").is_dir()

    # A restore asked of a node lands on it (the archive is in the fleet's shared backup dir).
    plain = with_volume("plain", toolbox("plain"))
    stub0.CreateEnvironment(pb.CreateEnvironmentRequest(name="plain", spec=plain), timeout=30)
    owner = wait_until(lambda: running(stub0, ["plain"], {"n0", "n1"}), "plain runs", 120)["plain"].node
    other = fleet.node({"n0": "n1", "n1": "n0"}[owner])
    with pytest.raises(grpc.RpcError) as elsewhere:
        other.stub().BackupEnvironment(pb.BackupEnvironmentRequest(name="plain"), timeout=30)
    assert elsewhere.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"runs on node '{owner}'" in (elsewhere.value.details() or "")
    backup = fleet.node(owner).stub().BackupEnvironment(pb.BackupEnvironmentRequest(name="plain"), timeout=120)
    restored = other.stub().RestoreEnvironment(
        pb.RestoreEnvironmentRequest(backup=backup.id, name="plain-back"), timeout=180
    )
    assert restored.node == other.name and restored.status == pb.ENVIRONMENT_STATUS_RUNNING
    assert fetch(url(restored, 8080)) == "hello from plain"
