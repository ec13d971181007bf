"""The scheduler's iptables rules: rendered from the allocations, applied in one transaction.

Every sync renders all of this instance's chains and applies the difference with one
``iptables-restore --noflush``: declaring a chain flushes it, so the new content replaces the
old atomically for new connections, and chains no longer wanted are deleted in the same
transaction. Built-in chains
only get one jump each, inserted once by :meth:`Iptables.ensure_jumps`.

Chain layout (``P`` is the instance prefix)::

    nat  PREROUTING  -> P-PREROUTING  -> P-SERVICES  (-d VIP --dport -> P-SVC-*)
                                      -> P-HOSTPORTS (dst-type LOCAL --dport -> P-SVC-*)
    nat  OUTPUT      -> P-OUTPUT      -> same two
    nat  P-SVC-*     statistic random over P-SEP-* (one per backend, kube-proxy style)
    nat  P-SEP-*     mark hairpin (source == backend), DNAT to backend
    nat  POSTROUTING -> P-POSTROUTING (masquerade marked traffic, egress per subnet)
    filter FORWARD   -> P-FORWARD     (intra-bridge accept, inter-bridge drop, egress policy)
    filter INPUT     -> P-INPUT       (from a bridge: replies only; nothing new reaches the host)
    raw  PREROUTING  -> P-PREROUTING  (from a bridge to 127.0.0.0/8: drop)

The bridges have ``route_localnet`` on, which published ports on 127.0.0.1 need (the host's own
127.0.0.1 connection is DNATed to a container and leaves on the bridge); the raw drop fences it:
a container crafting packets to 127.0.0.1 has them dropped before conntrack or routing sees them,
while replies to the host's connections still arrive addressed to the bridge's own address.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler import log as slog
from scheduler.errors import Internal
from scheduler.network.names import MASQ_MARK, Names
from scheduler.retry import linear, retry

BUILTINS = {"raw": ("PREROUTING",), "nat": ("PREROUTING", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD")}
"""table -> the built-in chains that jump to ours."""
TABLES = tuple(BUILTINS)
_MARK = f"0x{MASQ_MARK:x}/0x{MASQ_MARK:x}"
log = slog.get("iptables")


@dataclass(frozen=True)
class EnvRules:
    """What the rules need to know about one environment."""

    env: str
    bridge: str
    subnet: str
    vip_block: str


@dataclass(frozen=True)
class ServiceRules:
    """One service: its VIP, forwarded ports ((0, "all") for every port) and backends."""

    env: str
    service: str
    vip: str
    ports: tuple[tuple[int, str], ...]
    backends: tuple[str, ...]


@dataclass(frozen=True)
class HostPortRules:
    """One published host port."""

    env: str
    service: str
    host_ip: str
    host_port: int
    container_port: int
    protocol: str


Ruleset = dict[str, dict[str, list[str]]]
"""table -> chain -> rule arguments (without ``-A CHAIN``), in order."""


def render(
    names: Names,
    envs: Sequence[EnvRules],
    services: Sequence[ServiceRules],
    hostports: Sequence[HostPortRules],
    egress: bool,
) -> Ruleset:
    """All chains of the instance with their rules, deterministic for equal input."""
    nat: dict[str, list[str]] = {}
    flt: dict[str, list[str]] = {}
    svc_chain, hp_chain = names.services_chain, names.hostports_chain
    for builtin in ("PREROUTING", "OUTPUT"):
        nat[names.chain(builtin)] = [f"-j {svc_chain}", f"-m addrtype --dst-type LOCAL -j {hp_chain}"]
    post = nat[names.chain("POSTROUTING")] = [f"-m mark --mark {_MARK} -j MASQUERADE"]
    nat[svc_chain] = []
    nat[hp_chain] = []

    def balance(env: str, service: str, port: int, proto: str, backends: Sequence[str]) -> str:
        chain = names.service_chain(env, service, port, proto)
        if chain in nat:
            return chain
        rules = nat[chain] = []
        count = len(backends)
        for index, ip in enumerate(backends):
            sep = names.endpoint_chain(env, service, port, proto, ip)
            remaining = count - index
            if remaining > 1:
                rules.append(f"-m statistic --mode random --probability {1 / remaining:.10f} -j {sep}")
            else:
                rules.append(f"-j {sep}")
            target = ip if port == 0 else f"{ip}:{port}"
            proto_match = "" if port == 0 else f"-p {proto} "
            nat[sep] = [
                f"-s {ip}/32 -j MARK --set-xmark {_MARK}",
                f"{proto_match}-j DNAT --to-destination {target}",
            ]
        return chain

    for svc in sorted(services, key=lambda s: (s.env, s.service)):
        for port, proto in svc.ports or ((0, "all"),):
            chain = balance(svc.env, svc.service, port, proto, svc.backends)
            match = "" if port == 0 else f" -p {proto} -m {proto} --dport {port}"
            nat[svc_chain].append(f"-d {svc.vip}/32{match} -j {chain}")
    backends = {(s.env, s.service): s.backends for s in services}
    for hp in sorted(hostports, key=lambda h: (h.protocol, h.host_port, h.host_ip)):
        chain = balance(hp.env, hp.service, hp.container_port, hp.protocol, backends.get((hp.env, hp.service), ()))
        dst = "" if hp.host_ip == "0.0.0.0" else f" -d {hp.host_ip}/32"
        match = f"{dst} -p {hp.protocol} -m {hp.protocol} --dport {hp.host_port}"
        if hp.host_ip == "0.0.0.0" or hp.host_ip.startswith("127."):
            # Host-originated 127.0.0.1 sources must be rewritten or the reply cannot come back.
            nat[hp_chain].append(f"-s 127.0.0.0/8{match} -j MARK --set-xmark {_MARK}")
        nat[hp_chain].append(f"{match.lstrip()} -j {chain}")

    fwd = flt[names.chain("FORWARD")] = []
    wildcard = names.iface_wildcard
    for env in sorted(envs, key=lambda e: e.bridge):
        # A VIP that was not DNATed has no backend: refuse at once instead of an ARP timeout.
        fwd.append(f"-d {env.vip_block} -o {env.bridge} -p tcp -j REJECT --reject-with tcp-reset")
        fwd.append(f"-d {env.vip_block} -o {env.bridge} -j REJECT --reject-with icmp-port-unreachable")
        fwd.append(f"-i {env.bridge} -o {env.bridge} -j ACCEPT")
        if egress:
            post.append(f"-s {env.subnet} ! -o {env.bridge} -j MASQUERADE")
    fwd.append(f"-i {wildcard} -o {wildcard} -j DROP")
    fwd.append(f"-o {wildcard} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    fwd.append(f"-o {wildcard} -m conntrack --ctstate DNAT -j ACCEPT")
    fwd.append(f"-o {wildcard} -j DROP")
    fwd.append(f"-i {wildcard} -j {'ACCEPT' if egress else 'DROP'}")
    # The host itself is no service of any environment: containers get answers to connections
    # the host opened (published ports, probes), and nothing else. A published port reached on a
    # host address is DNATed to its container before this, so it goes through FORWARD instead.
    flt[names.chain("INPUT")] = [
        f"-i {wildcard} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-i {wildcard} -j DROP",
    ]
    raw = {names.chain("PREROUTING"): [f"-i {wildcard} -d 127.0.0.0/8 -j DROP"]}
    return {"raw": raw, "nat": nat, "filter": flt}


UNKNOWN: list[str] = ["<unknown rules>"]
"""Rules of a chain found in the kernel but not written by this process: always rewritten."""


def restore_script(desired: Ruleset, current: Ruleset) -> str:
    """iptables-restore input turning ``current`` into ``desired``; empty when they are equal.

    Only chains whose rules differ are declared (declaring flushes them), so the transaction
    stays small however many environments exist; chains no longer wanted are deleted.
    """
    out: list[str] = []
    for table in TABLES:
        want = desired.get(table, {})
        have = current.get(table, {})
        changed = [chain for chain, rules in want.items() if have.get(chain) != rules]
        stale = sorted(set(have) - set(want))
        if not changed and not stale:
            continue
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for chain in [*changed, *stale]]
        for chain in changed:
            out += [f"-A {chain} {rule}" for rule in want[chain]]
        out += [f"-X {chain}" for chain in stale]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def hostport_counts(names: Names, saved_nat: str) -> dict[tuple[str, int, str], int]:
    """Connections each published port forwarded, from ``iptables-save -c -t nat``.

    Keyed by (host_ip, host_port, protocol). The nat table sees only the first packet of a
    connection, so a rule's packet counter is the number of connections it matched: reading it is
    one short command for every environment, with nothing to track per connection.
    """
    out: dict[tuple[str, int, str], int] = {}
    head = f"-A {names.hostports_chain} "
    for line in saved_nat.splitlines():
        counters, _, rule = line.partition(" ")
        if not rule.startswith(head) or " MARK " in rule or not counters.startswith("["):
            continue
        parts = rule.split()
        try:
            packets = int(counters[1:].split(":", 1)[0])
            port = int(parts[parts.index("--dport") + 1])
            protocol = parts[parts.index("-p") + 1]
        except (ValueError, IndexError):
            continue
        host_ip = parts[parts.index("-d") + 1].removesuffix("/32") if "-d" in parts else "0.0.0.0"
        key = (host_ip, port, protocol)
        out[key] = out.get(key, 0) + packets
    return out


def removal_script(existing: dict[str, set[str]]) -> str:
    """iptables-restore input that flushes and deletes the given chains."""
    out: list[str] = []
    for table, chains in sorted(existing.items()):
        if not chains:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in sorted(chains)]
        out += [f"-X {c}" for c in sorted(chains)]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class SavedRules:
    """This instance's part of ``iptables-save``."""

    chains: dict[str, set[str]]
    """table -> our chains."""
    rules: int
    """Rules inside our chains."""
    jumps: dict[str, list[str]]
    """table -> built-in chains holding a jump to one of our chains."""


def parse_save(names: Names, text_by_table: dict[str, str]) -> SavedRules:
    """Pick our chains, rules and jumps out of ``iptables-save -t TABLE`` outputs."""
    chains: dict[str, set[str]] = {}
    jumps: dict[str, list[str]] = {}
    rules = 0
    for table, text in text_by_table.items():
        ours = chains.setdefault(table, set())
        for line in text.splitlines():
            if line.startswith(":"):
                name = line[1:].split()[0]
                if names.owns_chain(name):
                    ours.add(name)
            elif line.startswith("-A "):
                parts = line.split()
                chain = parts[1]
                if names.owns_chain(chain):
                    rules += 1
                elif "-j" in parts and names.owns_chain(parts[parts.index("-j") + 1]):
                    jumps.setdefault(table, []).append(chain)
    return SavedRules(chains, rules, jumps)


class _Busy(Internal):
    """Another writer committed between our read and our write; the same commit may succeed now."""


class Iptables:
    """Runs the iptables tools with the xtables lock, retrying transient conflicts."""

    def __init__(self, names: Names, timeout: float = 30.0, attempts: int = 5) -> None:
        self.names = names
        self.timeout = timeout
        self.attempts = attempts

    async def _run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run one tool; a commit refused because another writer got in first is tried again."""
        return await retry(
            lambda: self._run_once(argv, stdin), lambda err: isinstance(err, _Busy), linear(self.attempts, 0.05)
        )

    async def _run_once(self, argv: Sequence[str], stdin: str | None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise Internal(f"{argv[0]} did not finish within {self.timeout:g}s") from exc
        if proc.returncode == 0:
            return out.decode()
        last = err.decode(errors="replace").strip()
        failure = f"{' '.join(argv[:3])} failed: {last}"
        # Another writer committed between our read and write: nft refuses, try again.
        if "temporarily unavailable" in last or "resource busy" in last.lower():
            raise _Busy(failure)
        raise Internal(failure)

    async def forget_udp_flows(self, backends: Iterable[str]) -> None:
        """Delete UDP conntrack entries answered by ``backends``.

        UDP has no connection end: without this, a client that keeps its source port would go
        on talking to a removed backend until the entry times out (kube-proxy does the same).
        Needs the ``conntrack`` tool; without it the entries simply age out.
        """
        if shutil.which("conntrack") is None:
            log.warning("conntrack.missing", effect="UDP flows to removed backends age out instead")
            return
        for ip in backends:
            proc = await asyncio.create_subprocess_exec(
                "conntrack", "-D", "-p", "udp", "--reply-src", ip,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(self.timeout):
                _, err = await proc.communicate()
            # Exit status 1 means "no entry matched", which is the common case.
            if proc.returncode not in (0, 1):
                log.warning("conntrack.delete_failed", ip=ip, error=err.decode(errors="replace").strip())

    async def save(self) -> SavedRules:
        """Read our chains, rules and jumps from the kernel."""
        texts = {t: await self._run(["iptables-save", "-t", t]) for t in TABLES}
        return parse_save(self.names, texts)

    async def save_counters(self, table: str) -> str:
        """``iptables-save -c`` of one table: every rule with its [packets:bytes] counters."""
        return await self._run(["iptables-save", "-c", "-t", table])

    async def restore(self, script: str) -> None:
        """Apply an iptables-restore script touching only the chains it names."""
        await self._run(["iptables-restore", "-w", "5", "--noflush"], script)

    async def ensure_jumps(self) -> None:
        """Insert the jump from each built-in chain to ours, once, at the top."""
        for table, builtins in BUILTINS.items():
            for builtin in builtins:
                rule = ["-j", self.names.chain(builtin)]
                check = ["iptables", "-w", "5", "-t", table, "-C", builtin, *rule]
                proc = await asyncio.create_subprocess_exec(
                    *check, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                )
                if await proc.wait() != 0:
                    await self._run(["iptables", "-w", "5", "-t", table, "-I", builtin, "1", *rule])

    async def remove_jumps(self, jumps: dict[str, list[str]]) -> None:
        """Delete every jump from a built-in chain to one of ours."""
        for table, builtins in jumps.items():
            for builtin in builtins:
                target = self.names.chain(builtin)
                await self._run(["iptables", "-w", "5", "-t", table, "-D", builtin, "-j", target])


def chain_count(rules: Ruleset) -> int:
    """Number of chains in a ruleset."""
    return sum(len(chains) for chains in rules.values())


def all_chains(rules: Ruleset) -> Iterable[tuple[str, str]]:
    """(table, chain) pairs of a ruleset."""
    for table, chains in rules.items():
        for chain in chains:
            yield table, chain
