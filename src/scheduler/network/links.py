"""Host interfaces: the environment bridges, their ports (veths) and per-interface sysctls."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from scheduler.errors import Internal

PROC_SYS = Path("/proc/sys/net")
# Interfaces are read over netlink (socket.if_nameindex, `ip -json`), never from /sys/class/net:
# sysfs shows the namespace it was mounted in, which is not ours when the daemon was started with
# only its network namespace changed (nsenter --net, a container runtime's netns), and would then
# hide our bridges from teardown.


async def _ip(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


def _ip_json(*args: str) -> list[dict[str, object]]:
    result = subprocess.run(["ip", "-json", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise Internal(f"ip {' '.join(args)}: {result.stderr.strip()}")
    listed: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return listed


def exists(name: str) -> bool:
    """Whether an interface of that name exists in our network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def bridges(prefix: str) -> list[str]:
    """Bridges whose name starts with ``prefix``."""
    if not any(name.startswith(prefix) for _, name in socket.if_nameindex()):
        return []
    return sorted(
        str(link["ifname"])
        for link in _ip_json("link", "show", "type", "bridge")
        if str(link["ifname"]).startswith(prefix)
    )


def bridge_ports(bridge: str) -> list[str]:
    """Interfaces (the host ends of veths) enslaved to ``bridge``."""
    if not exists(bridge):
        return []
    try:
        return sorted(str(link["ifname"]) for link in _ip_json("link", "show", "master", bridge))
    except Internal:
        return []  # removed in between


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
