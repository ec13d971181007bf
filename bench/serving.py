"""Start-up and memory measurements shared by the benchmarks.

``wait_serving`` asks the health service with a fresh channel every 20 ms: a single channel
would back off for a second or more after the first refused connection, and that backoff
would be measured as start-up time. ``bare_grpc_start`` is the baseline for start-up: a
grpc.aio server in the same virtualenv that only serves the health service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BARE_SERVER = """
import asyncio, grpc, sys
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
async def main():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()
asyncio.run(main())
"""


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Seconds from now until ``address`` reports SERVING (the process must stay alive)."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process exited with {process.returncode} before serving")
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
        time.sleep(0.02)
    raise SystemExit(f"{address} did not serve within {timeout:g}s")


@dataclass(frozen=True)
class Start:
    """One start of a server: exec to SERVING (wall clock), the CPU it used by then, its RSS after."""

    seconds: float
    cpu_seconds: float
    rss_mb: float = 0.0


def bare_grpc_start(port: int) -> Start:
    """A start of a grpc.aio server that serves nothing but health (the start-up baseline).

    Its RSS is read two seconds after SERVING, as the daemon's is.
    """
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", BARE_SERVER, f"127.0.0.1:{port}"])
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        seconds, cpu = time.monotonic() - started, cpu_seconds(process.pid)
        time.sleep(2)
        return Start(seconds, cpu, memory_mb(process.pid)[0])
    finally:
        process.terminate()
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds ``pid`` used so far (0 when it is gone).

    Less sensitive than the wall clock to what else runs on a shared host, which stretches a
    start by the time the process waits for a core.
    """
    return _ticks(pid, 11, 12)


def children_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of the children ``pid`` has waited for (0 when it is gone)."""
    return _ticks(pid, 13, 14)


def _ticks(pid: int, *indexes: int) -> float:
    """The sum of those fields of ``/proc/PID/stat`` (counted after the command name), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in indexes) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS of ``pid`` in MB (0, 0 when it is gone)."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(" ")
                if key in values:
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values["Rss:"] / 1024, values["Pss:"] / 1024
