"""Shared state of the CNI network: configuration, persisted records, and the helpers every part uses."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import domain
from scheduler import log as slog
from scheduler.errors import (
    FailedPrecondition,
    NotFound,
    SchedulerError,
)
from scheduler.network import hosts, iptables, netns
from scheduler.network.addresses import (
    SubnetPlan,
    check_pool_against_routes,
    network,
    parse_pool,
    read_host_routes,
)
from scheduler.network.base import (
    Attachment,
    EnvNetworkInfo,
    ServicePort,
)
from scheduler.network.commit import GroupCommit
from scheduler.network.names import (
    Names,
)
from scheduler.network.plugins import CNI_VERSION, PluginRunner
from scheduler.network.ports import PortHolder, check_port, check_protocol
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


class CniBase:
    """State and internals shared by the parts of :class:`CniNetwork` (see its docstring for the arguments)."""

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
        self._creating: dict[str, tuple[ipaddress.IPv4Network, asyncio.Event]] = {}
        """Environments whose bridge is being made: their subnet, and an event set once that ended."""
        self._reserved: set[str] = set()
        """Containers whose netns and files :meth:`reserve` made and :meth:`attach` has not taken up yet."""
        self._started = False
        self._commits = GroupCommit(self._flush)
        self._rewrite = False
        """The next flush reads the kernel's chains first and rewrites them all."""
        self._read_back = False
        """The last flush was such a rewrite: a sweep right after it needs no second one."""

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
        plan = SubnetPlan.of(network(rec.subnet))
        return EnvNetworkInfo(env, rec.subnet, rec.bridge, str(plan.gateway), str(plan.vip_block))

    def _attachment(self, env: str, rec: EnvRecord, cid: str, cont: ContainerRecord) -> Attachment:
        directory = self._etc_dir / rec.bridge / cid
        plan = SubnetPlan.of(network(rec.subnet))
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
        plan = SubnetPlan.of(network(rec.subnet))
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

    def _commit(self) -> Awaitable[None]:
        """Persist the state as it is now and make the kernel rules match it; await it after the lock.

        Changes made while a commit runs share the next one (:mod:`scheduler.network.commit`), so
        a caller that awaits outside ``_lock`` lets other changes join the same flush.
        """
        return self._commits.request()

    async def _flush(self) -> None:
        read_back, self._read_back = self._rewrite, False
        if self._rewrite:
            self._rewrite = False
            saved = await self._ipt.save()
            self._applied = {t: {c: iptables.UNKNOWN for c in chains} for t, chains in saved.chains.items()}
        # The snapshots are taken here, on the loop: the thread that writes the file may outlive
        # this call when the operation is cancelled, and must not read records that move meanwhile.
        text, sequence = self._file.encode(self._state), self._file.next_sequence()
        desired = self._desired()
        # The file and the kernel's rules at once: neither needs the other (a restart rewrites the
        # rules from the file), and the file's fsync waits behind whatever else the host writes,
        # up to 45 ms on a busy one, which every service's traffic step of a deploy paid first.
        outcomes = await asyncio.gather(
            asyncio.to_thread(self._file.write, text, sequence), self._sync(desired), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        self._read_back = read_back

    def _desired(self) -> iptables.Ruleset:
        """The rules the state asks for."""
        return iptables.render(
            self.names,
            [
                iptables.EnvRules(e, r.bridge, r.subnet, str(SubnetPlan.of(network(r.subnet)).vip_block))
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

    async def _sync(self, desired: iptables.Ruleset) -> None:
        """Make the kernel's rules ``desired``, rewriting only the chains that differ from the last sync."""
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
        self._rewrite = True
        await self._commit()

    def _write_env_files(self, env: str, rec: EnvRecord) -> None:
        services = {name: svc.vip for name, svc in rec.services.items()}
        members = [(name, cont.ip) for cont in rec.containers.values() for name in (cont.hostname, *cont.aliases)]
        resolv = hosts.render_resolv(hosts.host_nameservers(self._resolv_conf) if self.egress else [])
        for cid, cont in rec.containers.items():
            directory = self._etc_dir / rec.bridge / cid
            hosts.write_in_place(directory / "hosts", hosts.render_hosts(cont.ip, cont.hostname, services, members))
            hosts.write_in_place(directory / "resolv.conf", resolv)


def port_records(ports: Sequence[int | ServicePort]) -> list[PortRecord]:
    out: list[PortRecord] = []
    for item in ports:
        port = item if isinstance(item, ServicePort) else ServicePort(item)
        check_port(port.port, "port")
        check_protocol(port.protocol)
        rec = PortRecord(port.port, port.protocol)
        if rec not in out:
            out.append(rec)
    return sorted(out, key=lambda p: (p.protocol, p.port))


def endpoint_of(rec: HostPortRecord) -> domain.Endpoint:
    return domain.Endpoint(
        service=rec.service,
        host_ip=rec.host_ip,
        host_port=rec.host_port,
        container_port=rec.container_port,
        protocol=domain.PortProtocol(rec.protocol),
    )


def count_files(directory: Path) -> int:
    return sum(1 for _ in directory.iterdir()) if directory.exists() else 0


def subdirs(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_dir()] if directory.exists() else []


def lease_files(directory: Path) -> dict[Path, str]:
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
