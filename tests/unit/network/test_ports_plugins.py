from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from scheduler.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from scheduler.network.plugins import PluginRunner, parse_add_result, plugin_error
from scheduler.network.ports import PortHolder, check_host_ip, check_protocol, holder
from scheduler.network.state import HostPortRecord


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_conflicts_consider_wildcard_addresses() -> None:
    recs = [HostPortRecord("shop", "web", "0.0.0.0", 20000, 80)]
    assert holder(recs, "127.0.0.1", 20000, "tcp") is recs[0]
    assert holder(recs, "127.0.0.1", 20000, "udp") is None
    assert holder(recs, "127.0.0.1", 20001, "tcp") is None


def test_claim_names_our_holder_and_refuses_foreign_listeners() -> None:
    ports = PortHolder()
    try:
        port = free_port()
        recs = [HostPortRecord("shop", "web", "127.0.0.1", port, 80)]
        with pytest.raises(AlreadyExists) as ours:
            ports.claim(recs, "blog", "front", "127.0.0.1", port, "tcp", (1, 1))
        assert f"127.0.0.1:{port}/tcp" in ours.value.message
        assert "'web'" in ours.value.message and "'shop'" in ours.value.message
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            busy = other.getsockname()[1]
            with pytest.raises(FailedPrecondition, match=f"{busy}/tcp is in use by another program"):
                ports.claim([], "blog", "front", "127.0.0.1", busy, "tcp", (1, 1))
            # Allocation skips the busy port and holds the one it returns.
            got = ports.claim([], "blog", "front", "127.0.0.1", 0, "tcp", (busy, busy + 50))
            assert got != busy and len(ports) == 1
            with socket.socket() as probe, pytest.raises(OSError):
                probe.bind(("127.0.0.1", got))
        ports.release(f"tcp/127.0.0.1/{got}")
        assert len(ports) == 0
    finally:
        ports.close()


def test_exhausted_range_is_reported() -> None:
    ports = PortHolder()
    port = free_port()
    recs = [HostPortRecord("shop", "web", "127.0.0.1", port, 80)]
    with pytest.raises(FailedPrecondition, match=f"network.port_range {port}-{port}"):
        ports.claim(recs, "blog", "front", "127.0.0.1", 0, "tcp", (port, port))


def test_bad_protocol_and_address_are_named() -> None:
    with pytest.raises(InvalidArgument, match="protocol 'sctp'"):
        check_protocol("sctp")
    with pytest.raises(InvalidArgument, match="host_ip 'localhost'"):
        check_host_ip("localhost")


def test_plugin_errors_map_to_scheduler_errors() -> None:
    def err(code: int, msg: str) -> bytes:
        return json.dumps({"cniVersion": "1.0.0", "code": code, "msg": msg, "details": "more"}).encode()

    assert isinstance(plugin_error("ADD", err(3, "gone"), b""), NotFound)
    assert isinstance(plugin_error("ADD", err(7, "bad config"), b""), InvalidArgument)
    assert isinstance(plugin_error("ADD", err(11, "busy"), b""), Unavailable)
    unknown = plugin_error("ADD", err(999, "weird"), b"")
    assert isinstance(unknown, Internal) and "weird: more" in unknown.message and "999" in unknown.message
    full = plugin_error("ADD", err(999, "no IP addresses available in range set: 10.0.0.2-10.0.0.3"), b"")
    assert isinstance(full, FailedPrecondition) and "exhausted" in full.message
    raw = plugin_error("ADD", b"", b"panic: boom")
    assert isinstance(raw, Internal) and "panic: boom" in raw.message


def test_parse_add_result_takes_the_sandbox_address() -> None:
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "sch-1", "mac": "aa"},
            {"name": "veth1", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/x/netns/c1"},
        ],
        "ips": [{"interface": 2, "address": "10.88.1.7/24", "gateway": "10.88.1.1"}],
    }
    parsed = parse_add_result(result)
    assert (parsed.ip, parsed.prefix, parsed.gateway) == ("10.88.1.7", 24, "10.88.1.1")
    with pytest.raises(Internal, match="no IPv4 address"):
        parse_add_result({"interfaces": [], "ips": []})


def write_plugin(directory: Path, body: str) -> None:
    path = directory / "fake"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


async def test_runner_follows_the_cni_calling_convention(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        'cat > "$(dirname "$0")/stdin.json"\n'
        'env | grep ^CNI_ | sort > "$(dirname "$0")/env.txt"\n'
        'echo \'{"cniVersion":"1.0.0","ips":[]}\'\n',
    )
    runner = PluginRunner(tmp_path)
    config = {"cniVersion": "1.0.0", "name": "net1", "type": "fake"}
    out = await runner.invoke("ADD", config, "c1", "/x/netns/c1")
    assert out == {"cniVersion": "1.0.0", "ips": []}
    assert json.loads((tmp_path / "stdin.json").read_text()) == config
    assert (tmp_path / "env.txt").read_text().splitlines() == [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=c1",
        "CNI_IFNAME=eth0",
        "CNI_NETNS=/x/netns/c1",
        f"CNI_PATH={tmp_path}",
    ]


async def test_runner_turns_plugin_json_errors_into_errors(tmp_path: Path) -> None:
    write_plugin(tmp_path, 'echo \'{"cniVersion":"1.0.0","code":7,"msg":"bridge name too long"}\'\nexit 1\n')
    with pytest.raises(InvalidArgument) as err:
        await PluginRunner(tmp_path).invoke("ADD", {"name": "n", "type": "fake"}, "c1", "")
    assert "bridge name too long" in err.value.message and "'c1'" in err.value.message


async def test_runner_reports_a_missing_plugin_dir(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="network.cni_bin_dir"):
        await PluginRunner(tmp_path / "nope").invoke("ADD", {"name": "n", "type": "bridge"}, "c1", "")


async def test_runner_bounds_a_hanging_plugin(tmp_path: Path) -> None:
    write_plugin(tmp_path, "exec sleep 30\n")
    from scheduler.errors import DeadlineExceeded

    with pytest.raises(DeadlineExceeded):
        await PluginRunner(tmp_path, timeout=0.3).invoke("ADD", {"name": "n", "type": "fake"}, "c1", "")
    assert os.path.exists(tmp_path / "fake")
