"""What a benchmark left on the host: counted by the names it chose, printed, and 0 when it cleaned up.

A benchmark names every network instance it used (its daemon's and its baseline's) and the
directories it ran under; afterwards this counts iptables chains and links carrying an
instance's prefix, network namespaces under those directories or named after an instance,
processes whose command line names one of the directories (shims, log processes, daemons,
containerd), mounts below them and loop devices backed by files below them (a volume
filesystem image). Other users of the host (tests, other benchmarks) have other prefixes and
directories and are not counted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.support.processes import loops_under, mounts_under, processes_naming


def count(instances: Iterable[str], roots: Iterable[Path | str]) -> dict[str, int]:
    """Chains, links, namespaces, processes and mounts still carrying one of the names."""
    instances = [i for i in instances if i]
    roots = [str(r).rstrip("/") for r in roots]
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    chains = [line for line in rules.splitlines() if line.startswith(":") and any(i in line for i in instances)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    own_links = [line for line in links.splitlines() if any(_names_link(line, i) for i in instances)]
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    namespaces = [n for n in netns if any(i in n for i in instances)]
    processes = processes_naming(*(root + "/" for root in roots)) if roots else {}
    mounts = [m for root in roots for m in mounts_under(Path(root))]
    loops = [d for root in roots for d in loops_under(Path(root))]
    return {
        "chains": len(chains),
        "links": len(own_links),
        "netns": len(namespaces),
        "processes": len(processes),
        "mounts": len(mounts),
        "loop_devices": len(loops),
    }


def instances_under(tmp: Path) -> list[str]:
    """The network instance of the daemon whose config a benchmark wrote in ``tmp`` (none when it never did)."""
    import yaml

    config = tmp / "config.yaml"
    return [str(yaml.safe_load(config.read_text())["network"]["instance"])] if config.exists() else []


def _names_link(line: str, instance: str) -> bool:
    return f" {instance}-" in line or f"@{instance}" in line or f" {instance}:" in line


def report(instances: Iterable[str], roots: Iterable[Path | str]) -> int:
    """Print the leftovers line; returns their total (0 when the benchmark cleaned up).

    Processes and mounts left under ``roots`` (a run cut short leaves its containers) are then
    ended and unmounted as a test session's sweep does, so that nothing outlives the benchmark;
    the printed count is what was found before that.
    """
    instances, roots = list(instances), [Path(r) for r in roots]
    found = count(instances, roots)
    total = sum(found.values())
    detail = ", ".join(f"{k} {v}" for k, v in found.items() if v)
    print(f"leftovers: {total}" + (f" ({detail})" if detail else ""), flush=True)
    if found["processes"]:
        for pid, line in sorted(processes_naming(*(str(r).rstrip("/") + "/" for r in roots)).items())[:5]:
            print(f"  process {pid}: {line[:200]}", flush=True)
    if found["processes"] or found["mounts"] or found["loop_devices"]:
        from tests.support.leftovers import sweep

        sweep(roots)
        print(f"  swept: {count(instances, roots)}", flush=True)
    return total
