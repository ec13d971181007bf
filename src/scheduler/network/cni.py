"""``CniNetwork``: environment networks on this host with the standard CNI plugins and iptables.

Each environment gets a bridge ``<instance>-<hash8>`` and a subnet carved from the pool. Every
container gets its own network namespace, pinned under ``<state_dir>/netns/<container_id>``
and joined to the bridge by the ``bridge`` plugin with ``host-local`` IPAM (leases under
``<state_dir>/ipam``). The top quarter of each subnet holds service VIPs; containers route that
block through the gateway, where the instance's nat chains DNAT it to the current backends.

Defaults and host-wide settings, on purpose:

* ``net.ipv4.ip_forward=1`` and ``net.bridge.bridge-nf-call-iptables=1`` are set at start:
  containers are routed, and bridged replies must pass conntrack to be un-DNATed.
* Egress (``egress=True``, the default): containers reach, masqueraded, the outside world.
  With ``egress=False`` they have no default route and forwarded traffic leaving their
  bridge is dropped.
* The host itself is never reachable from a container, in either mode: nothing new that
  arrives from a bridge is accepted by the host (only replies to the host's own
  connections), and packets to 127.0.0.0/8 from a bridge are dropped in the raw table.
  A published port reached on a host address is DNATed to its container first, so it still
  works; a nameserver listening on a host address does not (see iptables.py). IPv6 is off on
  the bridges, so host services listening on ``[::]`` are out of reach as well.
* Containers of different environments never reach each other: the instance's FORWARD
  chain drops bridge-to-bridge traffic, whatever the FORWARD policy is.
* Published ports default to ``settings.host_ip`` (127.0.0.1); connections from the host
  itself work (route_localnet on the bridge plus masquerade, as the portmap plugin does;
  route_localnet is fenced by the raw drop above, as kube-proxy fences it).
* ``resolv.conf`` lists the host's non-loopback nameservers when egress is on (none
  otherwise) and no search domains: service names resolve from the hosts file.
* A service declared without ports forwards every port and protocol of its VIP.
* Backends see the real client address, except for hairpin traffic (a container reaching
  its own service) and host-originated 127.0.0.1 traffic, which are masqueraded.

Known limits: IPv4 only; a container cannot reach another environment's published port
through a host address either (that is cross-environment traffic and is dropped).
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler import domain
from scheduler import log as slog
from scheduler.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SchedulerError,
)
from scheduler.network import hosts, iptables, links, netns
from scheduler.network.addresses import (
    SubnetPlan,
    carve_subnet,
    check_pool_against_routes,
    conflicting_routes,
    parse_pool,
    parse_subnet,
    read_host_routes,
)
from scheduler.network.base import (
    Attachment,
    EnvNetworkInfo,
    NetworkManager,
    ServiceInfo,
    ServicePort,
    Transport,
)
from scheduler.network.names import (
    Names,
    check_container_id,
    check_env,
    check_hostname,
    check_service,
)
from scheduler.network.plugins import CNI_VERSION, PluginRunner, parse_add_result
from scheduler.network.ports import PortHolder, check_host_ip, check_port, check_protocol
from scheduler.network.state import (
    ContainerRecord,
    EnvRecord,
    HostPortRecord,
    NetworkState,
    PortRecord,
    ServiceRecord,
    StateFile,
)

log = slog.get("network")


@dataclass(frozen=True)
class CniSettings:
    """What the network needs of the daemon's configuration (the daemon converts its own)."""

    pool: str = "10.88.0.0/16"
    """Address pool carved into one subnet per environment."""
    subnet_prefix: int = 24
    port_range: tuple[int, int] = (20000, 29999)
    """Host ports allocated when a service asks for none in particular."""
    host_ip: str = "127.0.0.1"
    """Default host address for published ports."""
    cni_bin_dir: Path = Path("/usr/lib/cni")


class CniNetwork:
    """The :class:`scheduler.network.base.NetworkManager` of a Linux host.

    Args:
        state_dir: where allocations, namespaces, leases and hosts files live; one per instance.
        settings: pool, subnet size, port range, default host IP and plugin directory.
        instance: prefix of every bridge, chain and name this instance owns (1-6 of [a-z0-9]).
        egress: whether containers may reach beyond their environment (see module docstring).
        routes_file: the host's IPv4 routing table, read to keep the pool clear of host routes.
        resolv_conf: the host's resolver configuration, the source of containers' nameservers.

    Raises:
        InvalidArgument: the pool is malformed or overlaps a host route (both named).
    """

    def __init__(
        self,
        state_dir: Path,
        settings: CniSettings,
        instance: str = "sch",
        *,
        egress: bool = True,
        plugin_timeout: float = 30.0,
        routes_file: Path = Path("/proc/net/route"),
        resolv_conf: Path = Path("/etc/resolv.conf"),
    ) -> None:
        self.names = Names(instance)
        self.settings = settings
        self.egress = egress
        self.state_dir = Path(state_dir)
        self._pool = parse_pool(settings.pool, settings.subnet_prefix)
        self._routes_file = routes_file
        self._resolv_conf = resolv_conf
        check_pool_against_routes(self._pool, read_host_routes(routes_file), self.names.iface_prefix)
        self._file = StateFile(self.state_dir / "network.json")
        self._netns_dir = self.state_dir / "netns"
        self._ipam_dir = self.state_dir / "ipam"
        self._etc_dir = self.state_dir / "etc"
        self._plugins = PluginRunner(Path(settings.cni_bin_dir), plugin_timeout)
        self._ipt = iptables.Iptables(self.names)
        self._ports = PortHolder()
        self._lock = asyncio.Lock()
        self._state = NetworkState()
        # Subnets of environments whose deletion is still removing their bridge: not yet free,
        # or a new environment would get a subnet whose route the old bridge still holds.
        self._releasing: dict[str, ipaddress.IPv4Network] = {}
        self._applied: iptables.Ruleset = {}
        """Our chains as last written to the kernel; syncs only send what differs."""
        self._pending: set[str] = set()
        self._started = False

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load persisted allocations, re-create bridges and rules, re-hold published ports."""
        async with self._lock:
            for directory in (self._netns_dir, self._ipam_dir, self._etc_dir):
                directory.mkdir(parents=True, exist_ok=True)
            check_pool_against_routes(self._pool, read_host_routes(self._routes_file), self.names.iface_prefix)
            self._state = await asyncio.to_thread(self._file.load)
            links.set_sysctl(("ipv4", "ip_forward"), "1")
            if links.get_sysctl(("bridge", "bridge-nf-call-iptables")) == "0":
                links.set_sysctl(("bridge", "bridge-nf-call-iptables"), "1")
            for env_rec in self._state.envs.values():
                await links.ensure_bridge(env_rec.bridge)
            for rec in self._state.ports:
                if not self._ports.rehold(rec):
                    log.warning("port.taken_by_another_program", port=rec.key, env=rec.env, service=rec.service)
            await self._resync()
            await self._ipt.ensure_jumps()
            self._started = True

    async def close(self) -> None:
        """Release the held port sockets; kernel state stays for the next start."""
        self._ports.close()

    async def teardown(self) -> None:
        """Remove every environment and then the instance's base chains and jumps."""
        await self.sweep(())
        async with self._lock:
            saved = await self._ipt.save()
            await self._ipt.remove_jumps(saved.jumps)
            await self._ipt.restore(iptables.removal_script(saved.chains))
            self._applied = {}
            self._started = False
        self._ports.close()

    # --- environments ---------------------------------------------------------------------

    async def ensure_environment(self, env: str, subnet: str = "") -> EnvNetworkInfo:
        """Create (or return) the environment's bridge and subnet.

        Raises:
            InvalidArgument: ``subnet`` is malformed or overlaps a host route.
            AlreadyExists: ``subnet`` overlaps another environment's subnet.
            FailedPrecondition: the environment has a different subnet, or the pool is full.
        """
        check_env(env)
        async with self._lock:
            self._require_started()
            rec = self._state.envs.get(env)
            if rec is not None:
                if subnet and parse_subnet(subnet) != ipaddress.ip_network(rec.subnet):
                    raise FailedPrecondition(
                        f"environment {env!r} already has subnet {rec.subnet}, not {subnet}",
                        env=env,
                        field="subnet",
                    )
                await links.ensure_bridge(rec.bridge)
                return self._info(env, rec)
            routes = read_host_routes(self._routes_file)
            taken = {name: ipaddress.IPv4Network(r.subnet) for name, r in self._state.envs.items()}
            taken |= {f"{name} (being deleted)": net for name, net in self._releasing.items()}
            bridge = self.names.bridge(env)
            if subnet:
                net = parse_subnet(subnet)
                for other, other_net in taken.items():
                    if other_net.overlaps(net):
                        raise AlreadyExists(
                            f"subnet {net} overlaps subnet {other_net} of environment {other!r}",
                            field="subnet",
                        )
                bad = conflicting_routes(net, routes, ignore_devices=[bridge])
                if bad:
                    raise InvalidArgument(f"subnet {net} overlaps host route {bad[0]}", field="subnet")
            else:
                net = carve_subnet(
                    self._pool, self.settings.subnet_prefix, taken.values(), routes, self.names.iface_prefix
                )
            for other, other_rec in self._state.envs.items():
                if other_rec.bridge == bridge:
                    raise AlreadyExists(f"environment {env!r} hashes to bridge {bridge} of environment {other!r}")
            await links.ensure_bridge(bridge)
            rec = EnvRecord(subnet=str(net), bridge=bridge)
            self._state.envs[env] = rec
            await self._commit()
            return self._info(env, rec)

    async def environment(self, env: str) -> EnvNetworkInfo:
        """The environment's network; NotFound when it has none."""
        async with self._lock:
            return self._info(env, self._env(env))

    async def delete_environment(self, env: str) -> None:
        """Remove the environment's containers, services, ports, rules, leases and bridge; idempotent."""
        await self._delete_environments([check_env(env)])

    async def _delete_environments(self, envs: Collection[str]) -> None:
        # Records go first, in one rule sync: nothing routes to the environments any more, and a
        # crash from here on leaves only orphans that sweep() recognises.
        wanted = set(envs)
        async with self._lock:
            gone = {e: self._state.envs.pop(e) for e in envs if e in self._state.envs}
            self._releasing.update({e: ipaddress.IPv4Network(rec.subnet) for e, rec in gone.items()})
            if self._release_ports(lambda p: p.env in wanted) or gone:
                await self._commit()
        try:
            results = await asyncio.gather(
                *(
                    self._forget_container(rec, cid, cont)
                    for rec in gone.values()
                    for cid, cont in rec.containers.items()
                ),
                return_exceptions=True,
            )
            results += await asyncio.gather(
                *(self._remove_env_leftovers(self.names.bridge(e)) for e in envs), return_exceptions=True
            )
        finally:
            async with self._lock:
                for e in gone:
                    self._releasing.pop(e, None)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _forget_container(self, rec: EnvRecord, container_id: str, cont: ContainerRecord) -> None:
        path = self._netns_dir / container_id
        await self._cni_del(self._cni_config(rec), container_id, path, cont.result)
        await netns.remove(path)

    async def _remove_env_leftovers(self, bridge: str) -> None:
        await links.delete_link(bridge)
        await asyncio.to_thread(shutil.rmtree, self._ipam_dir / bridge, True)
        await asyncio.to_thread(shutil.rmtree, self._etc_dir / bridge, True)

    # --- services -------------------------------------------------------------------------

    async def ensure_service(self, env: str, service: str, ports: Sequence[int | ServicePort] = ()) -> str:
        """Give the service a stable VIP (returned) and forward ``ports`` on it; empty forwards all.

        Calling it again with other ports replaces the forwarded ports; the VIP never changes.
        """
        check_service(service)
        wanted = _port_records(ports)
        async with self._lock:
            rec = self._env(env)
            svc = rec.services.get(service)
            if svc is None:
                plan = SubnetPlan.of(ipaddress.IPv4Network(rec.subnet))
                vip = plan.allocate_vip(s.vip for s in rec.services.values())
                svc = rec.services[service] = ServiceRecord(vip=vip, ports=wanted)
            elif svc.ports == wanted:
                return svc.vip
            svc.ports = wanted
            await self._commit()
            self._write_env_files(env, rec)
            return svc.vip

    async def remove_service(self, env: str, service: str) -> None:
        """Drop the service's VIP, its rules and its published ports; idempotent.

        The VIP may be handed to another service afterwards; hosts files stop naming it.
        """
        async with self._lock:
            rec = self._env(env)
            released = self._release_ports(lambda p: p.env == env and p.service == service)
            if rec.services.pop(service, None) is None and not released:
                return
            await self._commit()
            self._write_env_files(env, rec)

    async def service(self, env: str, service: str) -> ServiceInfo:
        """The service's VIP, ports and backends; NotFound when unknown."""
        async with self._lock:
            svc = self._service(env, service)
            return ServiceInfo(
                env=env,
                service=service,
                vip=svc.vip,
                ports=tuple(ServicePort(p.port, "udp" if p.protocol == "udp" else "tcp") for p in svc.ports),
                backends=tuple(svc.backends),
            )

    async def set_backends(self, env: str, service: str, ips: Sequence[str]) -> None:
        """Re-point the VIP and published ports of ``service`` to ``ips`` in one iptables transaction.

        New connections go to the new set at once; established ones keep their conntrack entry.

        Raises:
            InvalidArgument: an address is not a container address of the environment (named).
        """
        async with self._lock:
            rec = self._env(env)
            svc = self._service(env, service)
            plan = SubnetPlan.of(ipaddress.IPv4Network(rec.subnet))
            backends: list[str] = []
            for ip in ips:
                if not plan.is_container_ip(ip):
                    raise InvalidArgument(
                        f"backend {ip!r} of service {service!r} is not a container address of environment "
                        f"{env!r} ({plan.range_start}-{plan.range_end})",
                        field="backends",
                    )
                if ip not in backends:
                    backends.append(ip)
            if svc.backends == backends:
                return
            removed = [ip for ip in svc.backends if ip not in backends]
            svc.backends = backends
            await self._commit()
            if removed and self._carries_udp(env, service, svc):
                await self._ipt.forget_udp_flows(removed)

    # --- containers -----------------------------------------------------------------------

    async def attach(self, env: str, container_id: str, hostname: str, aliases: Sequence[str] = ()) -> Attachment:
        """Create the container's netns, join it to the environment's bridge, write its files.

        Idempotent: attaching an attached container returns its attachment. ``hostname`` and
        ``aliases`` (e.g. the replica name ``backend-0``) resolve to the container's address
        in every hosts file of the environment.
        """
        check_container_id(container_id)
        check_hostname(hostname)
        for alias in aliases:
            check_hostname(alias, "alias")
        async with self._lock:
            rec = self._env(env)
            existing = rec.containers.get(container_id)
            stale = existing is not None and not netns.is_netns(Path(existing.netns))
            if existing is not None and not stale:
                return self._attachment(env, rec, container_id, existing)
            if stale:
                # The namespace went away under the record (a host reboot): attach afresh.
                del rec.containers[container_id]
                await asyncio.to_thread(self._file.save, self._state)
            if container_id in self._pending:
                raise AlreadyExists(f"container {container_id!r} is being attached already", container_id=container_id)
            self._pending.add(container_id)
            config = self._cni_config(rec)
        path = self._netns_dir / container_id
        if path.exists() or stale:
            # A crash between ADD and saving the record left a namespace and a lease (or a reboot
            # left the lease alone); host-local refuses a second lease for the same container.
            await self._cni_del(config, container_id, path, None)
            await netns.remove(path)
        try:
            await netns.create(path)
            try:
                raw = await self._plugins.invoke("ADD", config, container_id, str(path))
                result = parse_add_result(raw)
            except BaseException:
                await self._cni_del(config, container_id, path, None)
                raise
        except BaseException:
            await netns.remove(path)
            async with self._lock:
                self._pending.discard(container_id)
            raise
        async with self._lock:
            self._pending.discard(container_id)
            current = self._state.envs.get(env)
            if current is not rec:
                await self._cni_del(config, container_id, path, raw)
                await netns.remove(path)
                raise NotFound(f"environment {env!r} was deleted while container {container_id!r} attached", env=env)
            record = ContainerRecord(
                hostname=hostname, ip=result.ip, netns=str(path), aliases=list(aliases), result=raw
            )
            rec.containers[container_id] = record
            await asyncio.to_thread(self._file.save, self._state)
            self._write_env_files(env, rec)
            return self._attachment(env, rec, container_id, record)

    async def check(self, env: str, container_id: str) -> None:
        """Run CNI CHECK against the recorded result.

        Raises:
            NotFound: the container is not attached.
            FailedPrecondition: the interface or address drifted from what ADD made (plugin's message).
        """
        async with self._lock:
            rec = self._env(env)
            cont = rec.containers.get(container_id)
            if cont is None:
                raise NotFound(f"container {container_id!r} is not attached to environment {env!r}", env=env)
            config = self._cni_config(rec, prev_result=cont.result)
        try:
            await self._plugins.invoke("CHECK", config, container_id, cont.netns)
        except SchedulerError as err:
            raise FailedPrecondition(
                f"network of container {container_id!r} failed its check: {err.message}",
                container_id=container_id,
            ) from err

    async def detach(self, env: str, container_id: str) -> None:
        """Stop routing to the container, CNI DEL, remove its netns and files; idempotent."""
        check_container_id(container_id)
        path = self._netns_dir / container_id
        async with self._lock:
            rec = self._state.envs.get(env)
            cont = rec.containers.get(container_id) if rec is not None else None
            if rec is not None and cont is not None:
                changed = [name for name, svc in rec.services.items() if cont.ip in svc.backends]
                for name in changed:
                    rec.services[name].backends.remove(cont.ip)
                if changed:
                    await self._commit()
                    if any(self._carries_udp(env, name, rec.services[name]) for name in changed):
                        await self._ipt.forget_udp_flows([cont.ip])
                config = self._cni_config(rec, prev_result=cont.result)
            orphan = rec is not None and cont is None and container_id not in self._pending and path.exists()
            if orphan and rec is not None:
                config = self._cni_config(rec)
        if rec is not None and cont is not None:
            await self._cni_del(config, container_id, path, cont.result, strict=True)
        elif orphan:
            # A namespace without a record (an attach cut short): its lease goes too.
            await self._cni_del(config, container_id, path, None)
        await netns.remove(path)
        async with self._lock:
            rec = self._state.envs.get(env)
            bridge = rec.bridge if rec is not None else self.names.bridge(env)
            if rec is not None and rec.containers.pop(container_id, None) is not None:
                await asyncio.to_thread(self._file.save, self._state)
                self._write_env_files(env, rec)
        await asyncio.to_thread(shutil.rmtree, self._etc_dir / bridge / container_id, True)

    async def write_hosts(self, env: str) -> None:
        """Rewrite every hosts and resolv.conf file of the environment."""
        async with self._lock:
            self._write_env_files(env, self._env(env))

    # --- published ports ------------------------------------------------------------------

    async def publish(
        self,
        env: str,
        service: str,
        container_port: int,
        host_port: int = 0,
        host_ip: str = "",
        protocol: Transport = "tcp",
    ) -> domain.Endpoint:
        """Forward ``host_ip:host_port`` to ``container_port`` of the service's backends.

        ``host_port=0`` allocates from ``settings.port_range``; an identical request returns the
        existing endpoint. The DNAT points at the service's balancing chain, so ``set_backends``
        re-points it without touching the host port.

        Raises:
            AlreadyExists: the port is published by one of our services (named with its env).
            FailedPrecondition: another program on the host holds it, or the range is full.
        """
        check_port(container_port, "container_port")
        if host_port:
            check_port(host_port, "host_port")
        check_protocol(protocol)
        host_ip = check_host_ip(host_ip or self.settings.host_ip)
        async with self._lock:
            self._service(env, service)
            for rec in self._state.ports:
                if (rec.env, rec.service, rec.container_port, rec.protocol, rec.host_ip) == (
                    env,
                    service,
                    container_port,
                    protocol,
                    host_ip,
                ) and host_port in (0, rec.host_port):
                    return _endpoint(rec)
            port = self._ports.claim(
                self._state.ports, env, service, host_ip, host_port, protocol, self.settings.port_range
            )
            rec = HostPortRecord(env, service, host_ip, port, container_port, protocol)
            self._state.ports.append(rec)
            try:
                await self._commit()
            except BaseException:
                self._state.ports.remove(rec)
                self._ports.release(rec.key)
                raise
            return _endpoint(rec)

    async def endpoints(self, env: str) -> tuple[domain.Endpoint, ...]:
        """Published ports of the environment."""
        async with self._lock:
            return tuple(_endpoint(p) for p in self._state.ports if p.env == env)

    def listeners(self, env: str) -> list[tuple[domain.Endpoint, socket.socket]]:
        """Our held sockets on the environment's published TCP ports."""
        out = []
        for rec in self._state.ports:
            sock = self._ports.held(rec.key) if rec.env == env and rec.protocol == "tcp" else None
            if sock is not None:
                out.append((_endpoint(rec), sock))
        return out

    async def connection_counts(self) -> dict[str, int]:
        """Per environment, connections forwarded by its host port rules (one iptables-save)."""
        counts = iptables.hostport_counts(self.names, await self._ipt.save_counters("nat"))
        out: dict[str, int] = {}
        for rec in list(self._state.ports):
            out[rec.env] = out.get(rec.env, 0) + counts.get((rec.host_ip, rec.host_port, rec.protocol), 0)
        return out

    async def unpublish_environment(self, env: str) -> None:
        """Release every host port of the environment; idempotent."""
        async with self._lock:
            if self._release_ports(lambda p: p.env == env):
                await self._commit()

    # --- accounting and recovery ----------------------------------------------------------

    async def resources(self) -> dict[str, int]:
        """Count what this instance owns, read back from the kernel and the disk.

        Keys: ``netns``, ``bridges``, ``veths``, ``iptables_chains``, ``iptables_rules``,
        ``iptables_jumps``, ``ipam_leases``, ``ports``, ``held_sockets``, ``subnets``,
        ``services``, ``containers``, ``hosts_files``.
        """
        saved = await self._ipt.save()
        bridges = links.bridges(self.names.iface_prefix)
        return {
            "netns": _count_files(self._netns_dir),
            "bridges": len(bridges),
            "veths": sum(len(links.bridge_ports(b)) for b in bridges),
            "iptables_chains": sum(len(c) for c in saved.chains.values()),
            "iptables_rules": saved.rules,
            "iptables_jumps": sum(len(j) for j in saved.jumps.values()),
            "ipam_leases": sum(len(_leases(d)) for d in _subdirs(self._ipam_dir)),
            "ports": len(self._state.ports),
            "held_sockets": len(self._ports),
            "subnets": len(self._state.envs),
            "services": sum(len(e.services) for e in self._state.envs.values()),
            "containers": sum(len(e.containers) for e in self._state.envs.values()),
            "hosts_files": sum(1 for p in self._etc_dir.rglob("*") if p.is_file()) if self._etc_dir.exists() else 0,
        }

    async def sweep(self, keep_envs: Collection[str]) -> None:
        """Delete every environment not in ``keep_envs``, then every orphan of this instance.

        Orphans are what a crash can leave behind without a record: namespace files, bridges,
        lease files, hosts directories and chains that no kept allocation explains.
        """
        keep = set(keep_envs)
        await self._delete_environments([e for e in self._state.envs if e not in keep])
        async with self._lock:
            kept = {e: r for e, r in self._state.envs.items() if e in keep}
            bridges = {r.bridge for r in kept.values()}
            containers = {cid for r in kept.values() for cid in r.containers}
            if self._netns_dir.exists():
                for path in self._netns_dir.iterdir():
                    if path.name not in containers and path.name not in self._pending:
                        await netns.remove(path)
            for bridge in links.bridges(self.names.iface_prefix):
                if bridge not in bridges:
                    await links.delete_link(bridge)
            for directory in _subdirs(self._ipam_dir):
                if directory.name not in bridges:
                    await asyncio.to_thread(shutil.rmtree, directory, True)
                    continue
                for lease, owner in _leases(directory).items():
                    if owner not in containers and owner not in self._pending:
                        lease.unlink(missing_ok=True)
            for directory in _subdirs(self._etc_dir):
                if directory.name not in bridges:
                    await asyncio.to_thread(shutil.rmtree, directory, True)
            if self._started:
                await self._resync()

    # --- internals ------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise FailedPrecondition("the network manager is not started: call start() first")

    def _env(self, env: str) -> EnvRecord:
        self._require_started()
        rec = self._state.envs.get(env)
        if rec is None:
            raise NotFound(f"environment {env!r} has no network", env=env)
        return rec

    def _service(self, env: str, service: str) -> ServiceRecord:
        svc = self._env(env).services.get(service)
        if svc is None:
            raise NotFound(f"service {service!r} of environment {env!r} has no address", env=env, service=service)
        return svc

    def _info(self, env: str, rec: EnvRecord) -> EnvNetworkInfo:
        plan = SubnetPlan.of(ipaddress.IPv4Network(rec.subnet))
        return EnvNetworkInfo(env, rec.subnet, rec.bridge, str(plan.gateway), str(plan.vip_block))

    def _attachment(self, env: str, rec: EnvRecord, cid: str, cont: ContainerRecord) -> Attachment:
        directory = self._etc_dir / rec.bridge / cid
        plan = SubnetPlan.of(ipaddress.IPv4Network(rec.subnet))
        return Attachment(
            env=env,
            container_id=cid,
            hostname=cont.hostname,
            netns_path=cont.netns,
            ip=cont.ip,
            gateway=str(plan.gateway),
            hosts_path=str(directory / "hosts"),
            resolv_path=str(directory / "resolv.conf"),
        )

    def _cni_config(self, rec: EnvRecord, prev_result: dict[str, Any] | None = None) -> dict[str, Any]:
        plan = SubnetPlan.of(ipaddress.IPv4Network(rec.subnet))
        gateway = str(plan.gateway)
        config: dict[str, Any] = {
            "cniVersion": CNI_VERSION,
            "name": rec.bridge,
            "type": "bridge",
            "bridge": rec.bridge,
            "isGateway": True,
            "isDefaultGateway": self.egress,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self._ipam_dir),
                "ranges": [
                    [
                        {
                            "subnet": rec.subnet,
                            "rangeStart": str(plan.range_start),
                            "rangeEnd": str(plan.range_end),
                            "gateway": gateway,
                        }
                    ]
                ],
                # More specific than the on-link subnet route: VIPs go to the gateway, where
                # the nat rules live, instead of being ARPed for on the bridge.
                "routes": [{"dst": str(plan.vip_block), "gw": gateway}],
            },
        }
        if prev_result is not None:
            config["prevResult"] = prev_result
        return config

    async def _cni_del(
        self,
        config: dict[str, Any],
        container_id: str,
        path: Path,
        prev_result: dict[str, Any] | None,
        strict: bool = False,
    ) -> None:
        if prev_result is not None:
            config = {**config, "prevResult": prev_result}
        # A DEL without a namespace still releases the lease (the spec requires plugins to cope).
        ns = str(path) if netns.is_netns(path) else ""
        try:
            await self._plugins.invoke("DEL", config, container_id, ns)
        except SchedulerError:
            if strict:
                raise
            log.exception("cni.del_failed", container=container_id)

    def _carries_udp(self, env: str, service: str, svc: ServiceRecord) -> bool:
        return (
            not svc.ports
            or any(p.protocol == "udp" for p in svc.ports)
            or any(p.env == env and p.service == service and p.protocol == "udp" for p in self._state.ports)
        )

    def _release_ports(self, match: Any) -> bool:
        gone = [p for p in self._state.ports if match(p)]
        for rec in gone:
            self._state.ports.remove(rec)
            self._ports.release(rec.key)
        return bool(gone)

    async def _commit(self) -> None:
        """Persist the state, then make the kernel rules match it."""
        # The snapshot is taken here, on the loop: the thread that writes it may outlive this call
        # when the operation is cancelled, and must not read records that move meanwhile.
        text, sequence = self._file.encode(self._state), self._file.next_sequence()
        await asyncio.to_thread(self._file.write, text, sequence)
        await self._sync()

    async def _sync(self) -> None:
        desired = iptables.render(
            self.names,
            [
                iptables.EnvRules(e, r.bridge, r.subnet, str(SubnetPlan.of(ipaddress.IPv4Network(r.subnet)).vip_block))
                for e, r in self._state.envs.items()
            ],
            [
                iptables.ServiceRules(
                    e, s, svc.vip, tuple((p.port, p.protocol) for p in svc.ports), tuple(svc.backends)
                )
                for e, r in self._state.envs.items()
                for s, svc in r.services.items()
            ],
            [
                iptables.HostPortRules(p.env, p.service, p.host_ip, p.host_port, p.container_port, p.protocol)
                for p in self._state.ports
            ],
            self.egress,
        )
        script = iptables.restore_script(desired, self._applied)
        if not script:
            return
        try:
            await self._ipt.restore(script)
        except BaseException:
            # The kernel may now hold either version: make the next sync rewrite everything.
            self._applied = {t: {c: iptables.UNKNOWN for c in chains} for t, chains in self._applied.items()}
            raise
        self._applied = {table: {c: list(r) for c, r in chains.items()} for table, chains in desired.items()}

    async def _resync(self) -> None:
        """Rewrite every chain we own, whatever this process believes the kernel holds."""
        saved = await self._ipt.save()
        self._applied = {t: {c: iptables.UNKNOWN for c in chains} for t, chains in saved.chains.items()}
        await self._sync()

    def _write_env_files(self, env: str, rec: EnvRecord) -> None:
        services = {name: svc.vip for name, svc in rec.services.items()}
        members = [(name, cont.ip) for cont in rec.containers.values() for name in (cont.hostname, *cont.aliases)]
        resolv = hosts.render_resolv(hosts.host_nameservers(self._resolv_conf) if self.egress else [])
        for cid, cont in rec.containers.items():
            directory = self._etc_dir / rec.bridge / cid
            hosts.write_in_place(directory / "hosts", hosts.render_hosts(cont.ip, cont.hostname, services, members))
            hosts.write_in_place(directory / "resolv.conf", resolv)


def _port_records(ports: Sequence[int | ServicePort]) -> list[PortRecord]:
    out: list[PortRecord] = []
    for item in ports:
        port = item if isinstance(item, ServicePort) else ServicePort(item)
        check_port(port.port, "port")
        check_protocol(port.protocol)
        rec = PortRecord(port.port, port.protocol)
        if rec not in out:
            out.append(rec)
    return sorted(out, key=lambda p: (p.protocol, p.port))


def _endpoint(rec: HostPortRecord) -> domain.Endpoint:
    return domain.Endpoint(
        service=rec.service,
        host_ip=rec.host_ip,
        host_port=rec.host_port,
        container_port=rec.container_port,
        protocol=domain.PortProtocol(rec.protocol),
    )


def _count_files(directory: Path) -> int:
    return sum(1 for _ in directory.iterdir()) if directory.exists() else 0


def _subdirs(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_dir()] if directory.exists() else []


def _leases(directory: Path) -> dict[Path, str]:
    """host-local lease files (named by address) and the container id written in each."""
    leases: dict[Path, str] = {}
    for path in directory.iterdir():
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue
        try:
            leases[path] = path.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            leases[path] = ""
    return leases


if TYPE_CHECKING:

    def _implements(network: CniNetwork) -> NetworkManager:
        return network
