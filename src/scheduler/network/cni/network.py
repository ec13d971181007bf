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

Over 400 lines because a third of it is the description above of what the class does to the
host, kept with the class; the parts live beside it (environments, links, iptables, netns,
ports, state, commit), and this is only the ``NetworkManager`` surface that joins them.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler import domain
from scheduler import log as slog
from scheduler.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    SchedulerError,
)
from scheduler.network import hosts, iptables, links, netns
from scheduler.network.base import (
    Attachment,
    NetworkManager,
    Transport,
)
from scheduler.network.cni.base import count_files, endpoint_of, lease_files, subdirs
from scheduler.network.cni.environments import EnvironmentNetworks
from scheduler.network.names import (
    check_container_id,
    check_hostname,
)
from scheduler.network.plugins import parse_add_result
from scheduler.network.ports import check_host_ip, check_port, check_protocol
from scheduler.network.state import (
    ContainerRecord,
    HostPortRecord,
)

log = slog.get("network")


class CniNetwork(EnvironmentNetworks):
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

    async def teardown(self) -> None:
        """Remove every environment and then the instance's base chains and jumps."""
        await self.sweep(())
        async with self._lock:
            await self._commits.idle()
            saved = await self._ipt.save()
            await self._ipt.remove_jumps(saved.jumps)
            await self._ipt.restore(iptables.removal_script(saved.chains))
            self._applied = {}
            self._started = False
        self._ports.close()

    # --- containers -----------------------------------------------------------------------

    async def reserve(self, env: str, container_id: str, hostname: str) -> Attachment | None:
        """Create the container's netns and files ahead of :meth:`attach`, which then joins them to the bridge.

        The runtime can set the container's task up in them (shim, ``runc create``) while attach
        runs the CNI plugins, the slowest part of a container's network. ``ip`` is empty until
        attach. None when the container is attached already or a leftover namespace is in the way
        (attach then does it all). Works before the environment's bridge exists; :meth:`detach`
        removes a reservation that attach never took up.
        """
        check_container_id(container_id)
        check_hostname(hostname)
        async with self._lock:
            rec = self._state.envs.get(env)
            path = self._netns_dir / container_id
            if rec is not None and container_id in rec.containers:
                return None
            if container_id in self._pending or container_id in self._reserved or path.exists():
                return None
            self._reserved.add(container_id)
            bridge = rec.bridge if rec is not None else self.names.bridge(env)
        directory = self._etc_dir / bridge / container_id
        try:
            await netns.create(path)
            resolv = hosts.render_resolv(hosts.host_nameservers(self._resolv_conf) if self.egress else [])
            await asyncio.to_thread(self._placeholders, directory, hostname, resolv)
        except BaseException:
            await netns.remove(path)
            async with self._lock:
                self._reserved.discard(container_id)
            raise
        return Attachment(
            env=env,
            container_id=container_id,
            hostname=hostname,
            netns_path=str(path),
            ip="",
            gateway="",
            hosts_path=str(directory / "hosts"),
            resolv_path=str(directory / "resolv.conf"),
        )

    @staticmethod
    def _placeholders(directory: Path, hostname: str, resolv: str) -> None:
        """The files a reserved container's mounts point at; attach rewrites them in place."""
        hosts.write_in_place(directory / "hosts", hosts.render_hosts("127.0.1.1", hostname, {}, []))
        hosts.write_in_place(directory / "resolv.conf", resolv)

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
                await self._commit()
            if container_id in self._pending:
                raise AlreadyExists(f"container {container_id!r} is being attached already", container_id=container_id)
            self._pending.add(container_id)
            reserved = container_id in self._reserved and not stale
            self._reserved.discard(container_id)
            config = self._cni_config(rec)
        path = self._netns_dir / container_id
        if (path.exists() and not reserved) or stale:
            # A crash between ADD and saving the record left a namespace and a lease (or a reboot
            # left the lease alone); host-local refuses a second lease for the same container.
            await self._cni_del(config, container_id, path, None)
            await netns.remove(path)
        try:
            if not (reserved and path.exists()):
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
            self._write_env_files(env, rec)
            committed = self._commit()
        await committed
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
        committed, udp = None, False
        async with self._lock:
            rec = self._state.envs.get(env)
            cont = rec.containers.get(container_id) if rec is not None else None
            if rec is not None and cont is not None:
                changed = [name for name, svc in rec.services.items() if cont.ip in svc.backends]
                for name in changed:
                    rec.services[name].backends.remove(cont.ip)
                if changed:
                    committed = self._commit()
                    udp = any(self._carries_udp(env, name, rec.services[name]) for name in changed)
                config = self._cni_config(rec, prev_result=cont.result)
            self._reserved.discard(container_id)
            orphan = rec is not None and cont is None and container_id not in self._pending and path.exists()
            if orphan and rec is not None:
                config = self._cni_config(rec)
        if committed is not None:
            await committed
        if udp and cont is not None:
            await self._ipt.forget_udp_flows([cont.ip])
        if rec is not None and cont is not None:
            await self._cni_del(config, container_id, path, cont.result, strict=True)
        elif orphan:
            # A namespace without a record (an attach cut short): its lease goes too.
            await self._cni_del(config, container_id, path, None)
        await netns.remove(path)
        async with self._lock:
            rec = self._state.envs.get(env)
            bridge = rec.bridge if rec is not None else self.names.bridge(env)
            committed = None
            if rec is not None and rec.containers.pop(container_id, None) is not None:
                self._write_env_files(env, rec)
                committed = self._commit()
        if committed is not None:
            await committed
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
                    return endpoint_of(rec)
            port = self._ports.claim(
                self._state.ports, env, service, host_ip, host_port, protocol, self.settings.port_range
            )
            rec = HostPortRecord(env, service, host_ip, port, container_port, protocol)
            self._state.ports.append(rec)
            committed = self._commit()
        try:
            await committed
        except BaseException:
            async with self._lock:
                if rec in self._state.ports:
                    self._state.ports.remove(rec)
                    self._ports.release(rec.key)
            raise
        return endpoint_of(rec)

    async def endpoints(self, env: str) -> tuple[domain.Endpoint, ...]:
        """Published ports of the environment."""
        async with self._lock:
            return tuple(endpoint_of(p) for p in self._state.ports if p.env == env)

    def listeners(self, env: str) -> list[tuple[domain.Endpoint, socket.socket]]:
        """Our held sockets on the environment's published TCP ports."""
        out = []
        for rec in self._state.ports:
            sock = self._ports.held(rec.key) if rec.env == env and rec.protocol == "tcp" else None
            if sock is not None:
                out.append((endpoint_of(rec), sock))
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
            committed = self._commit() if self._release_ports(lambda p: p.env == env) else None
        if committed is not None:
            await committed

    # --- accounting and recovery ----------------------------------------------------------

    async def resources(self) -> dict[str, int]:
        """Count what this instance owns, read back from the kernel and the disk.

        Keys: ``netns``, ``bridges``, ``veths``, ``iptables_chains``, ``iptables_rules``,
        ``iptables_jumps``, ``ipam_leases``, ``ports``, ``held_sockets``, ``subnets``,
        ``services``, ``containers``, ``hosts_files``.
        """
        saved = await self._ipt.save()
        bridges = await links.bridges(self.names.iface_prefix)
        return {
            "netns": count_files(self._netns_dir),
            "bridges": len(bridges),
            "veths": sum([len(await links.bridge_ports(b)) for b in bridges]),
            "iptables_chains": sum(len(c) for c in saved.chains.values()),
            "iptables_rules": saved.rules,
            "iptables_jumps": sum(len(j) for j in saved.jumps.values()),
            "ipam_leases": sum(len(lease_files(d)) for d in subdirs(self._ipam_dir)),
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
            bridges = {r.bridge for r in kept.values()} | {self.names.bridge(e) for e in self._creating}
            containers = {cid for r in kept.values() for cid in r.containers}
            if self._netns_dir.exists():
                for path in self._netns_dir.iterdir():
                    if path.name not in containers and path.name not in self._pending | self._reserved:
                        await netns.remove(path)
            # Only our bridges carry the prefix: a netlink dump (to tell bridges from other
            # links) is needed only when some prefixed name is not a kept environment's bridge.
            if set(links.names(self.names.iface_prefix)) - bridges:
                for bridge in await links.bridges(self.names.iface_prefix):
                    if bridge not in bridges:
                        await links.delete_link(bridge)
            for directory in subdirs(self._ipam_dir):
                if directory.name not in bridges:
                    await asyncio.to_thread(shutil.rmtree, directory, True)
                    continue
                for lease, owner in lease_files(directory).items():
                    if owner not in containers and owner not in self._pending:
                        lease.unlink(missing_ok=True)
            for directory in subdirs(self._etc_dir):
                if directory.name not in bridges:
                    await asyncio.to_thread(shutil.rmtree, directory, True)
            # At start-up the sweep follows start()'s own rewrite, with nothing written since:
            # a second read-back of every chain (iptables-save and -restore) would find the same.
            if self._started and not self._read_back:
                await self._resync()
            self._read_back = False


if TYPE_CHECKING:

    def _implements(network: CniNetwork) -> NetworkManager:
        return network
