"""Host interfaces: the environment bridges, their ports (veths) and per-interface sysctls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from scheduler.errors import Internal

SYS_NET = Path("/sys/class/net")
PROC_SYS = Path("/proc/sys/net")


async def _ip(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


def exists(name: str) -> bool:
    """Whether an interface of that name exists in the host namespace."""
    return (SYS_NET / name).exists()


def bridges(prefix: str) -> list[str]:
    """Bridges whose name starts with ``prefix``."""
    return sorted(p.name for p in SYS_NET.iterdir() if p.name.startswith(prefix) and (p / "bridge").is_dir())


def bridge_ports(bridge: str) -> list[str]:
    """Interfaces (the host ends of veths) enslaved to ``bridge``."""
    try:
        return sorted(p.name for p in (SYS_NET / bridge / "brif").iterdir())
    except FileNotFoundError:
        return []


def set_sysctl(key: Sequence[str], value: str) -> None:
    """Write ``/proc/sys/net/<key...>``."""
    try:
        (PROC_SYS.joinpath(*key)).write_text(value)
    except OSError as err:
        raise Internal(f"cannot set net.{'.'.join(key)}={value}: {err}") from err


def get_sysctl(key: Sequence[str]) -> str:
    """Read ``/proc/sys/net/<key...>``; empty when absent."""
    try:
        return PROC_SYS.joinpath(*key).read_text().strip()
    except OSError:
        return ""


async def ensure_bridge(name: str) -> None:
    """Create the bridge (up, with route_localnet so DNATed 127.0.0.1 traffic may leave on it).

    iptables.py drops what a container sends to 127.0.0.0/8 before routing could accept it.
    The CNI bridge plugin adopts an existing bridge of the same name and adds the gateway
    address on the first ADD.
    """
    if not exists(name):
        code, err = await _ip("link", "add", "name", name, "type", "bridge")
        if code != 0 and not exists(name):
            raise Internal(f"cannot create bridge {name}: {err}")
    code, err = await _ip("link", "set", name, "up")
    if code != 0:
        raise Internal(f"cannot bring bridge {name} up: {err}")
    set_sysctl(("ipv4", "conf", name, "route_localnet"), "1")
    # Environments are IPv4 only, and the host's iptables fences are IPv4 rules: with IPv6 on the
    # bridge, a container would reach host services listening on [::] through the bridge's
    # link-local address. Without it, the host's IPv6 stack drops whatever arrives on the bridge.
    if PROC_SYS.joinpath("ipv6", "conf", name).exists():
        set_sysctl(("ipv6", "conf", name, "disable_ipv6"), "1")


async def delete_link(name: str) -> None:
    """Delete an interface; a missing one is fine."""
    if not exists(name):
        return
    code, err = await _ip("link", "del", name)
    if code != 0 and exists(name):
        raise Internal(f"cannot delete interface {name}: {err}")
