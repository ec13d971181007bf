"""Acceptance tests of CniNetwork on the real kernel with the real CNI plugins.

"Containers" are network namespaces with sockets opened inside them (tests/support/network.py).
Every loop is bounded in count and time; all traffic stays inside namespaces and bridges made
here or on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from scheduler.network import ServicePort
from scheduler.network.cni import CniNetwork
from tests.support.network import Server, UdpServer, can_connect, connect, resolve, socket_in, unique
from tests.support.rawpacket import RawSender

pytestmark = pytest.mark.integration

Factory = Callable[..., CniNetwork]


class ConnectionLoop:
    """A client connecting again and again from one namespace, counting answers and failures."""

    def __init__(self, netns_path: str | None, host: str, port: int, max_attempts: int = 5000) -> None:
        self.netns_path = netns_path
        self.host = host
        self.port = port
        self.max_attempts = max_attempts
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        for _ in range(self.max_attempts):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                self.answers.append(connect(self.netns_path, self.host, self.port, timeout=2))
            except OSError as err:
                self.failures.append(repr(err))
            time.sleep(0.002)

    def __enter__(self) -> ConnectionLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(35)

    async def wait_for(self, name: str, count: int, timeout: float = 10) -> None:
        """Wait until ``name`` answered ``count`` more times."""
        start = self.answers.count(name)
        deadline = time.monotonic() + timeout
        while self.answers.count(name) < start + count:
            assert time.monotonic() < deadline, f"{name} answered {self.answers.count(name) - start} times"
            assert self._thread.is_alive(), "client loop ended early"
            await asyncio.sleep(0.02)


async def test_discovery_by_name_hairpin_and_isolation(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env_a, env_b = unique("a"), unique("b")
    info_a = await net.ensure_environment(env_a)
    info_b = await net.ensure_environment(env_b)
    assert info_a.subnet != info_b.subnet and info_a.bridge != info_b.bridge
    assert len(info_a.bridge) <= 15 and info_a.bridge.startswith(net.names.instance + "-")
    vip_web = await net.ensure_service(env_a, "web", [8080])
    vip_other = await net.ensure_service(env_b, "other", [8080])
    web, client, outsider = await asyncio.gather(
        net.attach(env_a, unique("web"), "web-0"),
        net.attach(env_a, unique("cli"), "client-0"),
        net.attach(env_b, unique("oth"), "other-0"),
    )
    await net.set_backends(env_a, "web", [web.ip])
    await net.set_backends(env_b, "other", [outsider.ip])
    servers = [Server(web.netns_path, "web", 8080), Server(outsider.netns_path, "other", 8080)]
    try:
        # The hosts file names the service (VIP), the replica and the container itself.
        assert resolve(client.hosts_path, "web") == vip_web
        assert resolve(client.hosts_path, "web-0") == web.ip
        assert resolve(client.hosts_path, "client-0") == client.ip
        assert resolve(client.hosts_path, "localhost") == "127.0.0.1"
        assert connect(client.netns_path, resolve(client.hosts_path, "web"), 8080) == "web"
        assert connect(client.netns_path, resolve(client.hosts_path, "web-0"), 8080) == "web"
        # Hairpin: the backend reaches its own service VIP.
        assert connect(web.netns_path, vip_web, 8080) == "web"
        # The other environment's hosts file does not know env A's names.
        with pytest.raises(LookupError):
            resolve(outsider.hosts_path, "web")
        # Isolation, both ways, by container address and by VIP.
        assert not can_connect(outsider.netns_path, web.ip, 8080, timeout=0.5)
        assert not can_connect(outsider.netns_path, vip_web, 8080, timeout=0.5)
        assert not can_connect(client.netns_path, outsider.ip, 8080, timeout=0.5)
        assert not can_connect(client.netns_path, vip_other, 8080, timeout=0.5)
        # Inside env B everything still works.
        assert connect(outsider.netns_path, vip_other, 8080) == "other"
        # A VIP port nobody forwards is refused at once, not left to time out.
        started = time.monotonic()
        assert not can_connect(client.netns_path, vip_web, 9999, timeout=3)
        assert time.monotonic() - started < 2
        await net.check(env_a, client.container_id)
    finally:
        for server in servers:
            server.close()
    await net.delete_environment(env_a)
    await net.delete_environment(env_b)
    await net.delete_environment(env_b)  # idempotent
    res = await net.resources()
    assert (res["netns"], res["bridges"], res["veths"], res["ipam_leases"], res["subnets"]) == (0, 0, 0, 0, 0)


async def test_client_keeps_reaching_service_across_backend_replacement(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env = unique("e")
    await net.ensure_environment(env)
    await net.ensure_service(env, "api", [8080])
    old, client = await asyncio.gather(net.attach(env, unique("old"), "api-0"), net.attach(env, unique("c"), "c-0"))
    await net.set_backends(env, "api", [old.ip])
    server_old = Server(old.netns_path, "old", 8080)
    server_new: Server | None = None
    vip = resolve(client.hosts_path, "api")  # resolved once, as a long-lived client would
    try:
        with ConnectionLoop(client.netns_path, vip, 8080) as loop:
            await loop.wait_for("old", 20)
            new = await net.attach(env, unique("new"), "api-1")
            server_new = Server(new.netns_path, "new", 8080)
            await net.set_backends(env, "api", [new.ip])
            await loop.wait_for("new", 10)
            server_old.close()
            await net.detach(env, old.container_id)
            await loop.wait_for("new", 30)
        assert loop.failures == []
        switched = loop.answers.index("new")
        assert set(loop.answers[switched:]) == {"new"}
        assert len(loop.answers) >= 60
        assert resolve(client.hosts_path, "api") == vip
        assert resolve(client.hosts_path, "api-1") == new.ip
        with pytest.raises(LookupError):
            resolve(client.hosts_path, "api-0")  # detached replicas leave every hosts file
    finally:
        server_old.close()
        if server_new is not None:
            server_new.close()
    await net.delete_environment(env)


async def test_balancing_over_two_replicas(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env = unique("e")
    await net.ensure_environment(env)
    vip = await net.ensure_service(env, "api")  # no ports: every port is forwarded
    r0, r1, client = await asyncio.gather(
        net.attach(env, unique("r"), "api-0"),
        net.attach(env, unique("r"), "api-1"),
        net.attach(env, unique("c"), "c"),
    )
    await net.set_backends(env, "api", [r0.ip, r1.ip])
    servers = [Server(r0.netns_path, "r0", 7000), Server(r1.netns_path, "r1", 7000)]
    try:
        answers = [connect(client.netns_path, vip, 7000) for _ in range(60)]
        assert set(answers) == {"r0", "r1"}
        assert min(answers.count("r0"), answers.count("r1")) >= 8  # p(fail) < 1e-8 with p=1/2
    finally:
        for server in servers:
            server.close()
    await net.delete_environment(env)


async def test_published_port_answers_and_conflicts_are_named(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env, env2 = unique("p"), unique("q")
    await net.ensure_environment(env)
    await net.ensure_environment(env2)
    await net.ensure_service(env, "front", [80])
    await net.ensure_service(env2, "front", [80])
    a = await net.attach(env, unique("fa"), "front-0")
    await net.set_backends(env, "front", [a.ip])
    server = Server(a.netns_path, "A", 80)
    try:
        endpoint = await net.publish(env, "front", 80)
        low, high = net.settings.port_range
        assert endpoint.host_ip == "127.0.0.1" and low <= endpoint.host_port <= high
        assert connect(None, "127.0.0.1", endpoint.host_port) == "A"
        assert await net.publish(env, "front", 80) == endpoint  # idempotent
        with pytest.raises(AlreadyExists) as held:
            await net.publish(env2, "front", 80, host_port=endpoint.host_port)
        assert str(endpoint.host_port) in held.value.message and env in held.value.message
        assert "front" in held.value.message
        # Nobody else can bind the published port while we hold it.
        with socket.socket() as probe, pytest.raises(OSError):
            probe.bind(("127.0.0.1", endpoint.host_port))
        # A port some other program listens on is refused with FailedPrecondition.
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            busy = other.getsockname()[1]
            with pytest.raises(FailedPrecondition) as taken:
                await net.publish(env2, "front", 80, host_port=busy)
            assert str(busy) in taken.value.message
        with pytest.raises(NotFound):
            await net.publish(env, "nosuch", 80)
        with pytest.raises(InvalidArgument):
            await net.publish(env, "front", 0)
        assert await net.endpoints(env) == (endpoint,)
        await net.unpublish_environment(env)
        assert await net.endpoints(env) == ()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", endpoint.host_port))  # released
    finally:
        server.close()
    await net.delete_environment(env)
    await net.delete_environment(env2)


async def test_repointing_a_published_port_loses_no_connection(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env = unique("r")
    await net.ensure_environment(env)
    await net.ensure_service(env, "front", [8080])
    a, b = await asyncio.gather(net.attach(env, unique("a"), "front-0"), net.attach(env, unique("b"), "front-1"))
    await net.set_backends(env, "front", [a.ip])
    servers = [Server(a.netns_path, "A", 8080), Server(b.netns_path, "B", 8080)]
    try:
        endpoint = await net.publish(env, "front", 8080)
        with ConnectionLoop(None, "127.0.0.1", endpoint.host_port) as loop:
            await loop.wait_for("A", 20)
            await net.set_backends(env, "front", [b.ip])
            await loop.wait_for("B", 20)
            servers[0].close()
            await loop.wait_for("B", 20)
            await net.set_backends(env, "front", [a.ip, b.ip][1:])  # no-op rewrite keeps working
            await loop.wait_for("B", 10)
        assert loop.failures == []
        switched = loop.answers.index("B")
        assert set(loop.answers[switched:]) == {"B"}
        assert (await net.endpoints(env))[0].host_port == endpoint.host_port
    finally:
        for server in servers:
            server.close()
    await net.delete_environment(env)


async def test_fifty_environments_get_distinct_subnets_and_ports(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    baseline = await net.resources()
    envs = [unique(f"f{i}") for i in range(50)]
    # All at once, ten of them asked for twice: subnets are claimed before the bridges are made
    # (outside the lock), so none is handed out twice and both callers of one get the same.
    both = await asyncio.gather(*(net.ensure_environment(e) for e in [*envs, *envs[:10]]))
    infos = both[:50]
    assert both[50:] == infos[:10]
    endpoints = []
    for env in envs:
        await net.ensure_service(env, "web", [80])
        endpoints.append(await net.publish(env, "web", 80))
    assert len({i.subnet for i in infos}) == 50
    assert len({i.bridge for i in infos}) == 50
    assert len({e.host_port for e in endpoints}) == 50
    attached = await asyncio.gather(*(net.attach(env, unique("c"), "web-0") for env in envs[:4]))
    for env, att in zip(envs[:4], attached, strict=True):
        await net.set_backends(env, "web", [att.ip])
    servers = [Server(att.netns_path, env, 80) for env, att in zip(envs[:4], attached, strict=True)]
    try:
        for env, endpoint in zip(envs[:4], endpoints[:4], strict=True):
            assert connect(None, "127.0.0.1", endpoint.host_port) == env
    finally:
        for server in servers:
            server.close()
    res = await net.resources()
    assert res["subnets"] == 50 and res["ports"] == 50 and res["bridges"] == 50
    assert res["netns"] == 4 and res["ipam_leases"] == 4 and res["veths"] == 4
    await asyncio.gather(*(net.delete_environment(e) for e in envs))
    assert await net.resources() == baseline


async def test_allocations_survive_a_restart(make_network: Factory, tmp_path: Path) -> None:
    state_dir = tmp_path / "restart"
    first = make_network(state_dir=state_dir, instance="r" + unique("x")[-5:])
    await first.start()
    env = unique("s")
    info = await first.ensure_environment(env)
    vip = await first.ensure_service(env, "db", [5432])
    att = await first.attach(env, unique("db"), "db-0")
    await first.set_backends(env, "db", [att.ip])
    endpoint = await first.publish(env, "db", 5432)
    await first.close()  # the daemon stops; kernel state stays
    second = CniNetwork(state_dir, first.settings, first.names.instance)
    await second.start()
    try:
        assert await second.environment(env) == info
        assert await second.ensure_service(env, "db", [5432]) == vip
        assert (await second.service(env, "db")).backends == (att.ip,)
        assert await second.endpoints(env) == (endpoint,)
        assert await second.attach(env, att.container_id, "db-0") == att  # idempotent
        server = Server(att.netns_path, "db", 5432)
        try:
            assert connect(None, "127.0.0.1", endpoint.host_port) == "db"
        finally:
            server.close()
        other = await second.ensure_environment(unique("t"))
        assert other.subnet != info.subnet
    finally:
        await second.teardown()
        await second.close()


async def test_sweep_removes_orphans_after_a_crash(make_network: Factory, tmp_path: Path) -> None:
    state_dir = tmp_path / "crash"
    net = make_network(state_dir=state_dir)
    await net.start()
    keep, drop = unique("k"), unique("d")
    await net.ensure_environment(keep)
    await net.ensure_environment(drop)
    kept = await net.attach(keep, unique("c"), "c-0")
    await net.attach(drop, unique("c"), "c-0")
    await net.ensure_service(drop, "web", [80])
    await net.publish(drop, "web", 80)
    # A crash in the middle of an attach leaves a namespace and a lease with no record.
    await net.close()
    (state_dir / "network.json").rename(state_dir / "saved.json")
    survivor = CniNetwork(state_dir, net.settings, net.names.instance)
    await survivor.start()
    assert (await survivor.resources())["netns"] == 2
    await survivor.sweep([])
    res = await survivor.resources()
    assert (res["netns"], res["bridges"], res["veths"], res["ipam_leases"], res["hosts_files"]) == (
        0,
        0,
        0,
        0,
        0,
    )
    # With the records back, a sweep keeps what is listed and removes the rest.
    await survivor.teardown()
    (state_dir / "saved.json").rename(state_dir / "network.json")
    again = CniNetwork(state_dir, net.settings, net.names.instance)
    await again.start()
    att = await again.attach(keep, kept.container_id, "c-0")
    assert att.ip == kept.ip
    await again.sweep([keep])
    res = await again.resources()
    assert res["subnets"] == 1 and res["ports"] == 0 and res["bridges"] == 1
    await again.teardown()
    assert {k: v for k, v in (await again.resources()).items() if v} == {}


async def test_check_detects_drift_and_exhaustion_is_reported(make_network: Factory) -> None:
    net = make_network(subnet_prefix=28)
    await net.start()
    env = unique("x")
    info = await net.ensure_environment(env)
    assert info.subnet.endswith("/28") and info.vip_range.endswith("/30")
    atts = [await net.attach(env, f"c{i}-{unique('z')}", f"c{i}") for i in range(10)]
    assert len({a.ip for a in atts}) == 10
    with pytest.raises(FailedPrecondition) as full:
        await net.attach(env, unique("c"), "c10")
    assert "exhausted" in full.value.message
    subprocess.run(["nsenter", f"--net={atts[0].netns_path}", "ip", "link", "del", "eth0"], check=True)
    with pytest.raises(FailedPrecondition) as drift:
        await net.check(env, atts[0].container_id)
    assert atts[0].container_id in drift.value.message
    await net.detach(env, atts[0].container_id)
    await net.detach(env, atts[0].container_id)  # idempotent
    assert (await net.attach(env, unique("c"), "again")).ip == atts[0].ip
    await net.delete_environment(env)


async def test_pool_overlapping_a_host_route_is_refused(make_network: Factory, tmp_path: Path) -> None:
    from scheduler.network.addresses import read_host_routes
    from scheduler.network.cni import CniSettings

    route = next(r for r in read_host_routes() if r.network.prefixlen > 0)
    with pytest.raises(InvalidArgument) as err:
        CniNetwork(tmp_path / "x", CniSettings(pool=str(route.network.supernet(new_prefix=16))), "tovl")
    assert "network.pool" in err.value.message and str(route.network) in err.value.message
    assert route.device in err.value.message


async def test_requested_subnet_overlaps_are_refused(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env, env2 = unique("a"), unique("b")
    info = await net.ensure_environment(env)
    with pytest.raises(AlreadyExists) as clash:
        await net.ensure_environment(env2, subnet=info.subnet)
    assert info.subnet in clash.value.message and env in clash.value.message
    with pytest.raises(FailedPrecondition):
        await net.ensure_environment(env, subnet="10.1.2.0/24")
    with pytest.raises(InvalidArgument):
        await net.ensure_environment(env2, subnet="not-a-subnet")
    with pytest.raises(InvalidArgument):
        await net.ensure_service(env, "bad_name")
    with pytest.raises(NotFound):
        await net.set_backends(env, "nosuch", [])
    await net.ensure_service(env, "web", [80])
    with pytest.raises(InvalidArgument) as outside:
        await net.set_backends(env, "web", ["192.0.2.10"])
    assert "192.0.2.10" in outside.value.message
    await net.delete_environment(env)


async def test_attach_recovers_from_a_crash_between_add_and_record(make_network: Factory, tmp_path: Path) -> None:
    state_dir = tmp_path / "half"
    net = make_network(state_dir=state_dir)
    await net.start()
    env = unique("h")
    await net.ensure_environment(env)
    saved = (state_dir / "network.json").read_text()
    cid = unique("c")
    first = await net.attach(env, cid, "c-0")
    await net.close()
    (state_dir / "network.json").write_text(saved)  # the record of the attach never hit the disk
    restarted = CniNetwork(state_dir, net.settings, net.names.instance)
    await restarted.start()
    try:
        again = await restarted.attach(env, cid, "c-0")
        assert again.netns_path == first.netns_path
        res = await restarted.resources()
        assert (res["netns"], res["ipam_leases"], res["veths"], res["containers"]) == (1, 1, 1, 1)
        await restarted.check(env, cid)
    finally:
        await restarted.teardown()


async def test_removing_a_service_drops_its_vip_rules_and_ports(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env = unique("rm")
    await net.ensure_environment(env)
    before = await net.resources()
    vip = await net.ensure_service(env, "web", [80])
    web = await net.attach(env, unique("w"), "web-0", aliases=["web"])
    await net.set_backends(env, "web", [web.ip])
    endpoint = await net.publish(env, "web", 80)
    server = Server(web.netns_path, "web", 80)
    try:
        assert resolve(web.hosts_path, "web") == vip  # the service name beats a replica alias
        assert connect(web.netns_path, vip, 80) == "web"
        await net.remove_service(env, "web")
        await net.remove_service(env, "web")  # idempotent
        assert not can_connect(web.netns_path, vip, 80, timeout=1)
        assert not can_connect(None, "127.0.0.1", endpoint.host_port, timeout=1)
        assert resolve(web.hosts_path, "web") == web.ip  # now only the alias is left
        with pytest.raises(NotFound):
            await net.service(env, "web")
        assert await net.endpoints(env) == ()
    finally:
        server.close()
    after = await net.resources()
    assert after["iptables_chains"] == before["iptables_chains"]
    assert (after["ports"], after["held_sockets"], after["services"]) == (0, 0, 0)
    await net.delete_environment(env)


async def test_attach_replaces_a_record_whose_namespace_vanished(make_network: Factory) -> None:
    from scheduler.network import netns

    net = make_network()
    await net.start()
    env = unique("v")
    await net.ensure_environment(env)
    cid = unique("c")
    first = await net.attach(env, cid, "c-0")
    await netns.remove(Path(first.netns_path))  # as after a reboot: the mount is gone, the lease stays
    again = await net.attach(env, cid, "c-0")
    assert netns.is_netns(Path(again.netns_path))
    await net.check(env, cid)
    res = await net.resources()
    assert (res["netns"], res["ipam_leases"], res["containers"]) == (1, 1, 1)
    await net.delete_environment(env)


async def test_udp_flows_follow_a_backend_switch(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env = unique("u")
    await net.ensure_environment(env)
    vip = await net.ensure_service(env, "dns", [ServicePort(5353, "udp")])
    a, b, client = await asyncio.gather(
        net.attach(env, unique("a"), "dns-0"), net.attach(env, unique("b"), "dns-1"), net.attach(env, unique("c"), "c")
    )
    await net.set_backends(env, "dns", [a.ip])
    servers = [UdpServer(a.netns_path, "A", 5353), UdpServer(b.netns_path, "B", 5353)]
    sock = socket_in(client.netns_path, socket.SOCK_DGRAM)
    sock.settimeout(2)

    def ask() -> str:
        sock.sendto(b"?", (vip, 5353))
        data, peer = sock.recvfrom(256)
        assert peer == (vip, 5353)  # the reply is un-NATed back to the VIP
        return data.decode()

    try:
        sock.bind(("0.0.0.0", 40000))  # one source port: one conntrack entry for every datagram
        assert [await asyncio.to_thread(ask) for _ in range(3)] == ["A", "A", "A"]
        await net.set_backends(env, "dns", [b.ip])
        assert [await asyncio.to_thread(ask) for _ in range(3)] == ["B", "B", "B"]
    finally:
        sock.close()
        for server in servers:
            server.close()
    await net.delete_environment(env)


async def test_host_refuses_containers_and_egress_is_configurable(make_network: Factory) -> None:
    def routes(netns_path: str) -> str:
        return subprocess.run(
            ["nsenter", f"--net={netns_path}", "ip", "-4", "route"], check=True, capture_output=True, text=True
        ).stdout

    for egress in (True, False):
        net = make_network(egress=egress)
        await net.start()
        env = unique("g")
        info = await net.ensure_environment(env)
        att = await net.attach(env, unique("c"), "c-0")
        assert ("default via " + info.gateway in routes(att.netns_path)) is egress
        assert f"{info.vip_range} via {info.gateway}" in routes(att.netns_path)
        resolv = Path(att.resolv_path).read_text()
        assert "search" not in resolv
        if not egress:
            assert "nameserver" not in resolv
        # A host service listening on the gateway address is out of reach in both modes,
        # while the host still reaches the container (what probes and published ports need).
        with socket.socket() as host_server:
            host_server.bind((info.gateway, 0))
            host_server.listen()
            with socket_in(att.netns_path) as sock:
                sock.settimeout(1)
                assert sock.connect_ex((info.gateway, host_server.getsockname()[1])) != 0
        # Nor over IPv6, through the link-local address the bridge would have (once usable).
        settle_ipv6(info.bridge)
        with socket.socket(socket.AF_INET6) as host_server6:
            host_server6.bind(("::", 0))
            host_server6.listen()
            with socket_in(att.netns_path, family=socket.AF_INET6) as sock:
                sock.settimeout(1)
                target = (link_local(info.bridge), host_server6.getsockname()[1], 0, ifindex(att.netns_path))
                assert sock.connect_ex(target) != 0
        server = Server(att.netns_path, "C", 8080)
        try:
            assert connect(None, att.ip, 8080) == "C"
        finally:
            server.close()
        await net.delete_environment(env)


def settle_ipv6(interface: str, timeout: float = 10) -> None:
    """Wait until no IPv6 address of ``interface`` is still tentative (duplicate detection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-6", "addr", "show", "dev", interface], capture_output=True, text=True).stdout
        if "tentative" not in out:
            return
        time.sleep(0.1)
    raise AssertionError(f"{interface} kept a tentative IPv6 address")


def link_local(interface: str) -> str:
    """The EUI-64 link-local address of a host interface, whether or not it has one configured."""
    mac = bytearray.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().strip().replace(":", ""))
    mac[0] ^= 0x02
    eui = bytes(mac[:3]) + b"\xff\xfe" + bytes(mac[3:])
    return "fe80::" + ":".join(eui[i : i + 2].hex() for i in range(0, 8, 2))


def ifindex(netns_path: str) -> int:
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", "-o", "link", "show", "eth0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split(":", 1)[0])


async def test_raw_frames_from_a_container_never_reach_the_host_loopback(make_network: Factory) -> None:
    net = make_network()
    await net.start()
    env = unique("r")
    await net.ensure_environment(env)
    await net.ensure_service(env, "front", [80])
    attacker = await net.attach(env, unique("ra"), "front-0")
    neighbour = await net.attach(env, unique("rb"), "front-1")
    await net.set_backends(env, "front", [attacker.ip])
    server = Server(attacker.netns_path, "A", 80)
    neighbour_server = Server(neighbour.netns_path, "B", 8081)
    neighbour_udp = socket_in(neighbour.netns_path, socket.SOCK_DGRAM)
    neighbour_udp.bind(("0.0.0.0", 0))
    host_tcp, host_udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        endpoint = await net.publish(env, "front", 80)  # route_localnet is on from here
        host_tcp.bind(("127.0.0.1", 0))
        host_tcp.listen()
        host_udp.bind(("127.0.0.1", 0))
        with RawSender(attacker.netns_path) as raw:
            # The frames are right: routed through the host to a neighbour, they are answered.
            assert raw.syn_arrives(neighbour.ip, 8081)
            assert raw.udp_arrives(neighbour_udp, neighbour.ip)
            # The same frames aimed at the host's loopback are dropped.
            assert not raw.syn_arrives("127.0.0.1", host_tcp.getsockname()[1], host_listener=True)
            assert not raw.udp_arrives(host_udp, "127.0.0.1")
        # The published port still serves on the host's 127.0.0.1.
        assert connect(None, "127.0.0.1", endpoint.host_port) == "A"
    finally:
        for closeable in (server, neighbour_server, neighbour_udp, host_tcp, host_udp):
            closeable.close()
    await net.delete_environment(env)


async def test_detach_releases_a_namespace_and_lease_left_without_a_record(
    make_network: Factory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "orphan"
    net = make_network(state_dir=state_dir)
    await net.start()
    env = unique("o")
    await net.ensure_environment(env)
    saved = (state_dir / "network.json").read_text()
    cid = unique("c")
    await net.attach(env, cid, "c-0")
    await net.close()
    (state_dir / "network.json").write_text(saved)
    restarted = CniNetwork(state_dir, net.settings, net.names.instance)
    await restarted.start()
    try:
        assert (await restarted.resources())["ipam_leases"] == 1
        await restarted.detach(env, cid)
        res = await restarted.resources()
        assert (res["netns"], res["ipam_leases"], res["veths"]) == (0, 0, 0)
    finally:
        await restarted.teardown()


async def test_a_reservation_is_taken_up_by_attach_or_released_by_detach(make_network: Factory) -> None:
    """A deploy sets a task up in a reserved namespace while attach runs the plugins: attach must use that namespace."""
    net = make_network()
    await net.start()
    env = unique("r")
    cid, dropped = unique("c"), unique("c")
    # Before the bridge exists, as a deploy does while the environment's network is being made.
    reserved = await net.reserve(env, cid, "c-0")
    assert reserved is not None and reserved.ip == ""
    namespace = Path(reserved.netns_path).stat().st_ino
    hosts_file = Path(reserved.hosts_path).stat().st_ino
    assert Path(reserved.resolv_path).is_file()
    server = Server(reserved.netns_path, "web", 8080)  # a process in the namespace before it is attached
    try:
        assert await net.reserve(env, cid, "c-0") is None  # once
        assert await net.reserve(env, dropped, "d-0") is not None
        await net.ensure_environment(env)
        attached = await net.attach(env, cid, "c-0", aliases=("web",))
        assert (attached.netns_path, attached.hosts_path) == (reserved.netns_path, reserved.hosts_path)
        assert Path(attached.netns_path).stat().st_ino == namespace  # the very namespace a task may have joined
        assert Path(attached.hosts_path).stat().st_ino == hosts_file  # rewritten in place under a bind mount
        assert f"{attached.ip}\tc-0" in Path(attached.hosts_path).read_text()
        client = await net.attach(env, unique("cli"), "client-0")
        assert connect(client.netns_path, attached.ip, 8080) == "web"  # the server opened before attach
        await net.detach(env, dropped)  # a reservation attach never took up leaves nothing
        res = await net.resources()
        assert (res["netns"], res["veths"], res["containers"], res["hosts_files"]) == (2, 2, 2, 4)
        await net.delete_environment(env)
        res = await net.resources()
        assert (res["netns"], res["veths"], res["ipam_leases"], res["hosts_files"]) == (0, 0, 0, 0)
    finally:
        server.close()


async def test_a_subnet_stays_taken_until_its_old_bridge_is_gone(
    make_network: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion still removing its bridge must not hand its subnet (whose route that bridge holds) on."""
    net = make_network()
    await net.start()
    old, new = unique("old"), unique("new")
    old_info = await net.ensure_environment(old)
    removing, release = asyncio.Event(), asyncio.Event()
    real_remove = net._remove_env_leftovers

    async def slow_remove(bridge: str) -> None:
        removing.set()
        await asyncio.wait_for(release.wait(), 30)
        await real_remove(bridge)

    monkeypatch.setattr(net, "_remove_env_leftovers", slow_remove)
    deleting = asyncio.create_task(net.delete_environment(old))
    await asyncio.wait_for(removing.wait(), 30)
    new_info = await net.ensure_environment(new)
    release.set()
    await deleting
    assert new_info.subnet != old_info.subnet
    # Once the old bridge is gone, its subnet is free again.
    again = await net.ensure_environment(unique("again"))
    assert again.subnet == old_info.subnet
