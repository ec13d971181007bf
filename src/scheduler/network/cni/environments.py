"""Life cycle, environments and services of the CNI network (bridges, subnets, service VIPs)."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Collection, Sequence

from scheduler import log as slog
from scheduler.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
)
from scheduler.network import links, netns
from scheduler.network.addresses import (
    SubnetPlan,
    carve_subnet,
    check_pool_against_routes,
    conflicting_routes,
    network,
    parse_subnet,
    read_host_routes,
)
from scheduler.network.base import (
    EnvNetworkInfo,
    ServiceInfo,
    ServicePort,
)
from scheduler.network.cni.base import CniBase, port_records
from scheduler.network.names import (
    check_env,
    check_service,
)
from scheduler.network.state import (
    ContainerRecord,
    EnvRecord,
    ServiceRecord,
)

log = slog.get("network")


class EnvironmentNetworks(CniBase):
    """Bridges, subnets and service VIPs: one bridge and subnet per environment."""

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
            await links.ensure_bridges([env_rec.bridge for env_rec in self._state.envs.values()])
            for rec in self._state.ports:
                if not self._ports.rehold(rec):
                    log.warning("port.taken_by_another_program", port=rec.key, env=rec.env, service=rec.service)
            await self._resync()
            await self._ipt.ensure_jumps()
            self._started = True

    async def close(self) -> None:
        """Release the held port sockets; kernel state stays for the next start."""
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
            creating = self._creating.get(env)
            mine = rec is None and creating is None
            if mine:
                net, bridge = self._claim(env, subnet)
                self._creating[env] = (net, made := asyncio.Event())
            else:
                made = creating[1] if creating is not None else asyncio.Event()
        if rec is not None:
            if subnet and parse_subnet(subnet) != network(rec.subnet):
                raise FailedPrecondition(
                    f"environment {env!r} already has subnet {rec.subnet}, not {subnet}", env=env, field="subnet"
                )
            await links.ensure_bridge(rec.bridge)
            return self._info(env, rec)
        if not mine:
            await made.wait()  # another caller makes it: then it exists, or that one failed
            return await self.ensure_environment(env, subnet)
        # The bridge is made outside the lock: a busy host's link changes wait for the kernel's
        # RTNL lock, and every attach and rule change of the other environments needs ours.
        try:
            await links.ensure_bridge(bridge)
            async with self._lock:
                rec = EnvRecord(subnet=str(net), bridge=bridge)
                self._state.envs[env] = rec
                committed = self._commit()
        finally:
            self._creating.pop(env, None)
            made.set()
        await committed
        return self._info(env, rec)

    def _claim(self, env: str, subnet: str) -> tuple[ipaddress.IPv4Network, str]:
        """The subnet and bridge of a new environment (under the lock); see :meth:`ensure_environment`."""
        # Our own bridges' routes matter only to a requested subnet (a leftover bridge's route).
        routes = read_host_routes(self._routes_file, skip_prefix="" if subnet else self.names.iface_prefix)
        taken = {name: network(r.subnet) for name, r in self._state.envs.items()}
        taken |= {f"{name} (being deleted)": net for name, net in self._releasing.items()}
        taken |= {f"{name} (being created)": net for name, (net, _) in self._creating.items()}
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
            net = carve_subnet(self._pool, self.settings.subnet_prefix, taken.values(), routes, self.names.iface_prefix)
        others = [(o, r.bridge) for o, r in self._state.envs.items()]
        for other, other_bridge in [*others, *((o, self.names.bridge(o)) for o in self._creating)]:
            if other_bridge == bridge:
                raise AlreadyExists(f"environment {env!r} hashes to bridge {bridge} of environment {other!r}")
        return net, bridge

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
            committed = self._commit() if self._release_ports(lambda p: p.env in wanted) or gone else None
        if committed is not None:
            await committed
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
        wanted = port_records(ports)
        async with self._lock:
            rec = self._env(env)
            svc = rec.services.get(service)
            if svc is None:
                plan = SubnetPlan.of(network(rec.subnet))
                vip = plan.allocate_vip(s.vip for s in rec.services.values())
                svc = rec.services[service] = ServiceRecord(vip=vip, ports=wanted)
            elif svc.ports == wanted:
                return svc.vip
            svc.ports = wanted
            self._write_env_files(env, rec)
            committed = self._commit()
        await committed
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
            self._write_env_files(env, rec)
            committed = self._commit()
        await committed

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
            plan = SubnetPlan.of(network(rec.subnet))
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
            committed = self._commit()
            udp = bool(removed) and self._carries_udp(env, service, svc)
        await committed
        if udp:
            await self._ipt.forget_udp_flows(removed)
