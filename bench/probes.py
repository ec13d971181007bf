"""HTTP health probe latency: the scheduler's own bounded exchange against httpx, on loopback.

Serves ``200 OK`` from an asyncio server on 127.0.0.1 and times ``--runs`` sequential probes of
each kind, after a warm-up: the prober of :mod:`scheduler.orchestrator.health`, an httpx client
made per probe (as a probe would without shared state), and one httpx client shared by every
probe (keep-alive off, as a probe must not hold connections to containers). Prints one JSON
document with the medians and p90s and each median as a ratio to the scheduler's prober.
Nothing outlives the run: the server and the clients belong to this process and are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

from scheduler.orchestrator import health

BODY_LIMIT = 4096

Probe = Callable[[str, int, str], Awaitable[object]]


async def _serve() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read(client: httpx.AsyncClient, url: str) -> int:
    async with client.stream("GET", url, headers={"User-Agent": "scheduler-health", "Connection": "close"}) as resp:
        body = b""
        async for chunk in resp.aiter_raw():
            body += chunk
            if len(body) >= BODY_LIMIT:
                break
        return resp.status_code


async def _httpx_per_probe(ip: str, port: int, path: str) -> int:
    async with httpx.AsyncClient(timeout=5, verify=False, trust_env=False) as client:
        return await _read(client, f"http://{ip}:{port}{path}")


def _httpx_shared(client: httpx.AsyncClient) -> Probe:
    async def run(ip: str, port: int, path: str) -> int:
        return await _read(client, f"http://{ip}:{port}{path}")

    return run


async def _time(probe: Probe, port: int, runs: int) -> list[float]:
    for _ in range(20):
        await probe("127.0.0.1", port, "/")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await probe("127.0.0.1", port, "/")
        samples.append(time.perf_counter() - started)
    return sorted(samples)


async def main(runs: int) -> dict[str, object]:
    server, port = await _serve()
    shared = httpx.AsyncClient(
        timeout=5, verify=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    )
    kinds: dict[str, Probe] = {
        "scheduler": health._http,
        "httpx_per_probe": _httpx_per_probe,
        "httpx_shared_client": _httpx_shared(shared),
    }
    out: dict[str, object] = {"runs": runs}
    async with server, shared:
        medians = {}
        for name, probe in kinds.items():
            samples = await _time(probe, port, runs)
            medians[name] = statistics.median(samples)
            out[name] = {
                "median_ms": round(medians[name] * 1000, 3),
                "p90_ms": round(samples[int(0.9 * (len(samples) - 1))] * 1000, 3),
            }
    out["median_ratio_to_scheduler"] = {k: round(v / medians["scheduler"], 1) for k, v in medians.items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    print(json.dumps(asyncio.run(main(parser.parse_args().runs)), indent=1))
