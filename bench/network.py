"""Latency of the network layer on this host: run as root with ``python bench/network.py``.

Measures ensure_environment, attach (serial and 10 in parallel), set_backends and publish
with a private instance prefix, pool and state directory, then removes everything it made and
checks that nothing is left. Prints one JSON document.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from scheduler.network.addresses import read_host_routes
from scheduler.network.cni import CniNetwork, CniSettings


def free_pool() -> str:
    routes = [r.network for r in read_host_routes() if r.network.prefixlen > 0]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(64, 254)}.0.0/16")
        if not any(net.overlaps(r) for r in routes):
            return str(net)
    raise SystemExit("no free /16 for the benchmark pool")


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2),
        "max_ms": round(ms[-1], 2),
    }


async def main(envs: int = 20, serial: int = 20, parallel: int = 10) -> dict[str, object]:
    low = random.randrange(10000, 18000)
    settings = CniSettings(pool=free_pool(), port_range=(low, low + 999))
    instance = "b" + uuid.uuid4().hex[:5]
    with tempfile.TemporaryDirectory(prefix="bench-network-") as state_dir:
        net = CniNetwork(Path(state_dir), settings, instance)
        await net.start()
        times: dict[str, list[float]] = {k: [] for k in ("environment", "service", "publish", "attach")}
        try:
            names = [f"env{i}" for i in range(envs)]
            for env in names:
                start = time.perf_counter()
                await net.ensure_environment(env)
                times["environment"].append(time.perf_counter() - start)
                start = time.perf_counter()
                await net.ensure_service(env, "web", [80])
                times["service"].append(time.perf_counter() - start)
                start = time.perf_counter()
                await net.publish(env, "web", 80)
                times["publish"].append(time.perf_counter() - start)
            ips = []
            for i in range(serial):
                start = time.perf_counter()
                ips.append((await net.attach(names[0], f"s{i}", f"web-{i}")).ip)
                times["attach"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await asyncio.gather(*(net.attach(names[1], f"p{i}", f"web-{i}") for i in range(parallel)))
            parallel_wall = time.perf_counter() - start
            repoint = []
            for i in range(20):
                start = time.perf_counter()
                await net.set_backends(names[0], "web", ips[i % len(ips) :][:3])
                repoint.append(time.perf_counter() - start)
            start = time.perf_counter()
            await net.delete_environment(names[0])
            delete_one = time.perf_counter() - start
        finally:
            start = time.perf_counter()
            await net.teardown()
            teardown = time.perf_counter() - start
            left = {k: v for k, v in (await net.resources()).items() if v}
    return {
        "environments": envs,
        "ensure_environment": summary(times["environment"]),
        "ensure_service": summary(times["service"]),
        "publish": summary(times["publish"]),
        "attach_serial": summary(times["attach"]),
        f"attach_{parallel}_parallel_wall_ms": round(parallel_wall * 1000, 1),
        "set_backends": summary(repoint),
        f"delete_environment_with_{serial}_containers_ms": round(delete_one * 1000, 1),
        "teardown_ms": round(teardown * 1000, 1),
        "leftovers": left,
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    print(json.dumps(result, indent=1))
    sys.exit(1 if result["leftovers"] else 0)
