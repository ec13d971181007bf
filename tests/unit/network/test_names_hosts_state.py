from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from scheduler.errors import InvalidArgument
from scheduler.network.hosts import host_nameservers, render_hosts, render_resolv, write_in_place
from scheduler.network.names import Names, check_container_id, check_env, check_hostname, check_instance
from scheduler.network.state import (
    ContainerRecord,
    EnvRecord,
    HostPortRecord,
    NetworkState,
    PortRecord,
    ServiceRecord,
    StateFile,
)


def test_names_are_short_stable_and_prefixed() -> None:
    names = Names("abcdef")
    bridge = names.bridge("a-very-long-environment-name-" + "x" * 90)
    assert len(bridge) == 15 and bridge.startswith("abcdef-")
    assert names.bridge("shop") == Names("abcdef").bridge("shop")
    assert names.bridge("shop") != names.bridge("shop2")
    assert len(names.service_chain("e", "s", 80, "tcp")) <= 28
    assert len(names.endpoint_chain("e", "s", 80, "tcp", "10.0.0.2")) <= 28
    assert names.owns_chain("abcdef-FORWARD") and not names.owns_chain("abcdefg-FORWARD")


@pytest.mark.parametrize("bad", ["", "Sch", "sch-1", "toolong7", "s_1"])
def test_bad_instance_prefix_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_instance(bad)
    assert err.value.details["field"] == "network.instance"


def test_bad_identifiers_name_their_field() -> None:
    with pytest.raises(InvalidArgument, match="environment name"):
        check_env("bad/env")
    with pytest.raises(InvalidArgument, match="container id"):
        check_container_id("../etc")
    with pytest.raises(InvalidArgument, match="alias 'a_b'"):
        check_hostname("a_b", "alias")


def test_hosts_file_lists_self_services_and_replicas() -> None:
    text = render_hosts(
        "10.0.0.3",
        "web-1",
        {"web": "10.0.0.254", "db": "10.0.0.253"},
        [("web-0", "10.0.0.2"), ("web-1", "10.0.0.3"), ("db-0", "10.0.0.4")],
    )
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.0.0.3\tweb-1",
        "10.0.0.253\tdb",
        "10.0.0.254\tweb",
        "10.0.0.4\tdb-0",
        "10.0.0.2\tweb-0",
    ]


def test_resolv_conf_drops_loopback_nameservers_and_search(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("search corp.example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    servers = host_nameservers(host)
    assert servers == ["192.0.2.53"]
    assert "search" not in render_resolv(servers) and "nameserver 192.0.2.53" in render_resolv(servers)
    assert host_nameservers(tmp_path / "missing") == []


def test_write_in_place_keeps_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "hosts"
    write_in_place(path, "a long first version of the file\n")
    inode = os.stat(path).st_ino
    write_in_place(path, "short\n")
    assert path.read_text() == "short\n"
    assert os.stat(path).st_ino == inode


def test_state_round_trips_and_corrupt_files_are_set_aside(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "network.json")
    assert file.load() == NetworkState()
    state = NetworkState(
        envs={
            "shop": EnvRecord(
                subnet="10.88.1.0/24",
                bridge="sch-1234abcd",
                services={"web": ServiceRecord("10.88.1.254", [PortRecord(80)], ["10.88.1.2"])},
                containers={"c1": ContainerRecord("web-0", "10.88.1.2", "/x/netns/c1", ["w"], {"ips": []})},
            )
        },
        ports=[HostPortRecord("shop", "web", "127.0.0.1", 20000, 80)],
    )
    file.save(state)
    assert file.load() == state
    assert json.loads((tmp_path / "network.json").read_text())["version"] == 1
    (tmp_path / "network.json").write_text("{not json")
    assert file.load() == NetworkState()
    assert len(list(tmp_path.glob("network.json.corrupt.*"))) == 1


def test_overlapping_writes_all_succeed_and_the_newest_snapshot_stays(tmp_path: Path) -> None:
    # A cancelled operation leaves its write running in a thread while the next one starts.
    file = StateFile(tmp_path / "network.json")
    snapshots = [
        (file.encode(NetworkState(ports=[HostPortRecord("e", "s", "127.0.0.1", 20000 + i, 80)])), file.next_sequence())
        for i in range(40)
    ]
    errors: list[BaseException] = []

    def write(text: str, sequence: int) -> None:
        try:
            file.write(text, sequence)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=snap) for snap in reversed(snapshots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert file.load().ports[0].host_port == 20039
    file.write(snapshots[0][0], snapshots[0][1])  # an older snapshot arriving late is dropped
    assert file.load().ports[0].host_port == 20039
    assert [p.name for p in tmp_path.iterdir()] == ["network.json"]


def test_the_state_document_has_every_field_of_every_record() -> None:
    state = NetworkState(
        {
            "e": EnvRecord(
                "10.1.0.0/24",
                "br0",
                {"web": ServiceRecord("10.1.0.254", [PortRecord(80), PortRecord(53, "udp")], ["10.1.0.2"])},
                {"c1": ContainerRecord("web-0", "10.1.0.2", "/run/ns", ["web"], {"ips": [{"address": "x"}]})},
            )
        },
        [HostPortRecord("e", "web", "127.0.0.1", 20000, 80)],
    )
    assert state.to_json() == {"version": 1, "data": asdict(state)}
    assert NetworkState.from_json(state.to_json()) == state
