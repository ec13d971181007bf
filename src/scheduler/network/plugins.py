"""Invoking CNI plugins as the CNI specification says: environment, config on stdin, JSON out.

Only the ``bridge`` plugin (with ``host-local`` IPAM, which it executes itself) is used: the
scheduler does its own DNAT, so ``portmap`` is not needed and every ADD costs one exec.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    SchedulerError,
    Unavailable,
)

CNI_VERSION = "1.0.0"
IFNAME = "eth0"

# CNI spec error codes (1-99 are reserved for the spec) mapped to the scheduler's errors.
_ERROR_CODES: dict[int, type[SchedulerError]] = {
    1: InvalidArgument,  # incompatible CNI version
    2: InvalidArgument,  # unsupported field in network configuration
    3: NotFound,  # container unknown or does not exist
    4: InvalidArgument,  # invalid necessary environment variables
    5: Internal,  # I/O failure
    6: InvalidArgument,  # failed to decode content
    7: InvalidArgument,  # invalid network config
    11: Unavailable,  # try again later
}


@dataclass(frozen=True)
class AddResult:
    """What the orchestrator needs from a CNI ADD result."""

    ip: str
    prefix: int
    gateway: str
    raw: dict[str, Any]


class PluginRunner:
    """Runs CNI plugins found in ``bin_dir``."""

    def __init__(self, bin_dir: Path, timeout: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.timeout = timeout

    async def invoke(
        self,
        command: str,
        config: dict[str, Any],
        container_id: str,
        netns: str,
        ifname: str = IFNAME,
    ) -> dict[str, Any]:
        """Run ``config["type"]`` with CNI_COMMAND=``command``; returns the parsed stdout (or {})."""
        plugin = self.bin_dir / str(config["type"])
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.bin_dir),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        what = f"CNI {command} of {config['type']} for container {container_id!r} on network {config['name']!r}"
        try:
            proc = await asyncio.create_subprocess_exec(
                str(plugin),
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise FailedPrecondition(
                f"{what}: cannot run plugin {plugin}: {err} (is network.cni_bin_dir right?)",
                field="network.cni_bin_dir",
            ) from err
        try:
            async with asyncio.timeout(self.timeout):
                stdout, stderr = await proc.communicate(json.dumps(config).encode())
        except TimeoutError as err:
            proc.kill()
            await proc.wait()
            raise DeadlineExceeded(f"{what}: no answer within {self.timeout:g}s") from err
        if proc.returncode != 0:
            raise plugin_error(what, stdout, stderr)
        if not stdout.strip():
            return {}
        try:
            parsed = json.loads(stdout)
        except ValueError as err:
            raise Internal(f"{what}: plugin printed invalid JSON: {stdout[:200]!r}") from err
        if not isinstance(parsed, dict):
            raise Internal(f"{what}: plugin printed {type(parsed).__name__}, not an object")
        return parsed


def plugin_error(what: str, stdout: bytes, stderr: bytes) -> SchedulerError:
    """Turn a failed plugin's JSON error (or its stderr) into a scheduler error with its message."""
    try:
        doc = json.loads(stdout)
        code = int(doc.get("code", 0))
        msg = str(doc.get("msg", ""))
        details = str(doc.get("details", ""))
    except (ValueError, TypeError, AttributeError):
        code, msg, details = 0, "", ""
    text = msg + (f": {details}" if details else "")
    if not text:
        text = stderr.decode(errors="replace").strip() or "plugin failed without a message"
    if "no IP addresses available" in text:
        return FailedPrecondition(f"{what}: address range exhausted: {text}", field="subnet")
    return _ERROR_CODES.get(code, Internal)(f"{what}: {text} (CNI error code {code})")


def parse_add_result(result: dict[str, Any], ifname: str = IFNAME) -> AddResult:
    """Pick the IPv4 address of the container interface from a CNI 1.0 result."""
    interfaces = result.get("interfaces", [])
    for ipc in result.get("ips", []):
        index = ipc.get("interface")
        if index is not None and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        address, _, prefix = str(ipc.get("address", "")).partition("/")
        if ":" in address or not prefix:
            continue
        return AddResult(ip=address, prefix=int(prefix), gateway=str(ipc.get("gateway", "")), raw=result)
    raise Internal(f"CNI ADD result has no IPv4 address on {ifname}: {json.dumps(result)[:300]}")
