"""API latency and throughput with many environments, as ratios against a bare grpc.aio server.

Run as root: ``python -m bench.api [--envs N] [--calls N] [--slices N] [--seconds S] [--idle S]``.

A real daemon (managed containerd, log level info) gets ``--envs`` toolbox environments (one
small container each) and waits until all run. A bare grpc.aio server in its own process, with
one generic unary handler answering a fixed number of bytes, is the baseline: it answers
exactly as many bytes as the daemon's GetEnvironment (or ListEnvironments) response. Both are
driven by the same grpc.aio client, which sends pre-serialised requests and keeps responses as
bytes, so client-side (de)serialisation is the same for both sides; the runs are interleaved.

Measured in ``--rounds`` rounds on the same environments, printed as a table per round and the
spread (min, median, max) against the targets (``--json FILE`` keeps every figure):

- GetEnvironment latency, one caller (p50, p99), against the echo server;
- RPC/s of GetEnvironment with 16 concurrent callers, as a ratio to the echo server's: the
  median ratio of ``--slices`` pairs of short runs, daemon and echo back to back;
- ListEnvironments(page_size=100) latency (p50, p99), against the echo server;
- GetEnvironment over the unix socket (the default transport, relayed after ``SO_PEERCRED``):
  latency and RPC/s with 16 callers, as a ratio to the echo server's;
- the daemon's CPU while idle with every environment running (% of one core, from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import leftovers
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from tests.support import processes
from tests.support.daemon import DaemonProcess, daemon_instance, start_daemon
from tests.support.images import build

SERVICE = "/scheduler.v1.SchedulerService/"
ECHO = "/bench.Echo/Answer"
TICKS = os.sysconf("SC_CLK_TCK")


# --- the baseline: a bare grpc.aio server in its own process --------------------------------------


async def _serve_echo(port_file: Path) -> None:
    """Answer every call with as many zero bytes as the 4-byte big-endian size the request names."""

    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return bytes(int.from_bytes(request[:4], "big"))

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(answer)  # no (de)serialisers: bytes in, bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Answer": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def start_echo(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "echo.port"
    process = subprocess.Popen([sys.executable, "-m", "bench.api", "--echo", str(port_file)])
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the echo server did not start")
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text()}"


# --- measuring ----------------------------------------------------------------------------------------


Call = Callable[[], Awaitable[bytes]]


def raw_call(channel: grpc.aio.Channel, method: str, request: bytes) -> Call:
    stub = channel.unary_unary(method)  # bytes in, bytes out, like the echo side

    async def call() -> bytes:
        response: bytes = await stub(request, timeout=30)
        return response

    return call


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def latencies(call: Call, count: int) -> dict[str, float]:
    for _ in range(20):  # warm up
        await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


async def throughput(call: Call, callers: int, seconds: float, pid: int) -> tuple[float, float]:
    """Calls per second with ``callers`` concurrent callers, and the server's CPU microseconds per call.

    The CPU per call (from /proc, of the serving process ``pid``) hardly depends on how busy
    the shared machine is, unlike the rate: it is the steadier figure of the two.
    """
    stop = time.monotonic() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call()
            done += 1

    started, cpu_before = time.monotonic(), cpu_seconds(pid)
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.monotonic() - started), (cpu_seconds(pid) - cpu_before) / max(done, 1) * 1e6


def _start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (installed by hand, not a dependency) sampling the daemon during the load phases."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(output)])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


# --- the run ------------------------------------------------------------------------------------------


async def create_environments(channel: grpc.aio.Channel, names: list[str], parallel: int = 8) -> None:
    create = channel.unary_unary(SERVICE + "CreateEnvironment")
    queue = list(names)

    async def worker() -> None:
        while queue:
            name = queue.pop()
            request = pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="toolbox"))
            await create(request.SerializeToString(), timeout=60)

    await asyncio.gather(*(worker() for _ in range(parallel)))


async def wait_running(channel: grpc.aio.Channel, count: int, timeout: float) -> None:
    list_call = channel.unary_unary(
        SERVICE + "ListEnvironments",
        request_serializer=pb.ListEnvironmentsRequest.SerializeToString,
        response_deserializer=pb.ListEnvironmentsResponse.FromString,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await list_call(pb.ListEnvironmentsRequest(page_size=500), timeout=30)
        statuses = [e.status for e in reply.environments]
        running = statuses.count(pb.ENVIRONMENT_STATUS_RUNNING)
        failed = (
            len(statuses)
            - running
            - sum(s in (pb.ENVIRONMENT_STATUS_PENDING, pb.ENVIRONMENT_STATUS_DEPLOYING) for s in statuses)
        )
        if failed:
            raise RuntimeError(f"{failed} environments did not deploy")
        if running == count:
            return
        await asyncio.sleep(1)
    raise RuntimeError(f"not every environment was running within {timeout}s")


async def paired_throughput(
    daemon: tuple[Call, int], echo: tuple[Call, int], slices: int, seconds: float
) -> dict[str, float]:
    """RPC/s at 16 callers, daemon against echo, in ``slices`` short pairs, each pair back to back.

    The machine is shared: how much of a core either server gets drifts within seconds, so one
    long run of each compares two different machines. Each pair measures both sides within
    ``2 * seconds`` (which goes first alternates), and the ratio is the median of the pairs'
    ratios; the CPU per call is summed over all of them.
    """
    ratios: list[float] = []
    totals = {"daemon": [0.0, 0.0], "echo": [0.0, 0.0]}  # rate sum, cpu-per-call sum
    rates: dict[str, float] = {}
    for number in range(slices):
        order = (("daemon", daemon), ("echo", echo))
        for side, (call, pid) in order if number % 2 == 0 else reversed(order):
            rate, per_call = await throughput(call, 16, seconds, pid)
            rates[side] = rate
            totals[side][0] += rate
            totals[side][1] += per_call
        ratios.append(rates["daemon"] / rates["echo"])
    return {
        "daemon": totals["daemon"][0] / slices,
        "echo": totals["echo"][0] / slices,
        "ratio": statistics.median(ratios),
        "daemon_cpu": totals["daemon"][1] / slices,
        "echo_cpu": totals["echo"][1] / slices,
    }


async def one_round(calls: Calls, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure once, daemon and echo interleaved (the machine is shared and noisy)."""
    get_daemon = await latencies(calls.get, args.calls)
    get_echo = await latencies(calls.echo_get, args.calls)
    echo = (calls.echo_get, calls.echo_pid)
    tcp = await paired_throughput((calls.get, calls.daemon_pid), echo, args.slices, args.seconds)
    list_daemon = await latencies(calls.list_, max(50, args.calls // 4))
    list_echo = await latencies(calls.echo_list, max(50, args.calls // 4))
    # The default transport: the unix socket, relayed by the daemon to gRPC after SO_PEERCRED.
    unix_latency = await latencies(calls.get_unix, args.calls)
    unix = await paired_throughput((calls.get_unix, calls.daemon_pid), echo, args.slices, args.seconds)
    return {
        "get_environment": {"daemon": get_daemon, "echo": get_echo},
        "rpc_per_s_16_callers": {
            "daemon": round(tcp["daemon"]),
            "echo": round(tcp["echo"]),
            "ratio": round(tcp["ratio"], 2),
            "cpu_us_per_call": {"daemon": round(tcp["daemon_cpu"]), "echo": round(tcp["echo_cpu"])},
            "cpu_ratio": round(tcp["echo_cpu"] / tcp["daemon_cpu"], 2),
        },
        "unix_socket_get_environment": {
            "daemon": unix_latency,
            "rpc_per_s_16_callers": round(unix["daemon"]),
            "echo_rpc_per_s": round(unix["echo"]),
            "ratio_to_echo": round(unix["ratio"], 2),
            "cpu_us_per_call": round(unix["daemon_cpu"]),
            "cpu_ratio": round(unix["echo_cpu"] / unix["daemon_cpu"], 2),
        },
        "list_environments_100": {"daemon": list_daemon, "echo": list_echo},
    }


@dataclass
class Calls:
    """The calls measured: the daemon's, over TCP and the unix socket, and the echo server's of the same sizes."""

    get: Call
    get_unix: Call
    list_: Call
    echo_get: Call
    echo_list: Call
    daemon_pid: int
    echo_pid: int


async def measure(
    daemon_address: str, unix_socket: Path, echo_address: str, pids: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    daemon_pid, echo_pid = pids
    async with (
        grpc.aio.insecure_channel(daemon_address) as daemon,
        grpc.aio.insecure_channel(f"unix:{unix_socket}") as unix,
        grpc.aio.insecure_channel(echo_address) as echo,
    ):
        names = [f"bench-{i:03d}" for i in range(args.envs)]
        started = time.monotonic()
        await create_environments(daemon, names)
        await wait_running(daemon, args.envs, timeout=60 + 3 * args.envs)
        deployed_s = time.monotonic() - started

        get_request = pb.GetEnvironmentRequest(name=names[len(names) // 2]).SerializeToString()
        get = raw_call(daemon, SERVICE + "GetEnvironment", get_request)
        get_size = len(await get())
        list_request = pb.ListEnvironmentsRequest(page_size=100).SerializeToString()
        list_ = raw_call(daemon, SERVICE + "ListEnvironments", list_request)
        list_size = len(await list_())
        calls = Calls(
            get=get,
            get_unix=raw_call(unix, SERVICE + "GetEnvironment", get_request),
            list_=list_,
            echo_get=raw_call(echo, ECHO, get_size.to_bytes(4, "big")),
            echo_list=raw_call(echo, ECHO, list_size.to_bytes(4, "big")),
            daemon_pid=daemon_pid,
            echo_pid=echo_pid,
        )

        # Idle first, before the load below leaves anything behind; after a settling pause.
        await asyncio.sleep(args.settle)
        before, at = cpu_seconds(daemon_pid), time.monotonic()
        await asyncio.sleep(args.idle)
        idle_core = (cpu_seconds(daemon_pid) - before) / (time.monotonic() - at)

        profiler = _start_profiler(daemon_pid, args.profile) if args.profile else None
        rounds = [await one_round(calls, args) for _ in range(args.rounds)]
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)

    return {
        "environments": args.envs,
        "deploy_all_s": round(deployed_s, 1),
        "bytes": {"get_environment": get_size, "list_environments_100": list_size},
        "idle_cpu": {"percent_of_a_core": round(idle_core * 100, 2), "window_s": args.idle},
        "rounds": rounds,
    }


TARGETS = {
    "get_p99_ms": 5.0,
    "rpc_ratio": 0.7,
    "list_p99_ms": 20.0,
    "idle_percent": 2.0,
}


def summary(report: dict[str, Any]) -> str:
    """The figures as a table: one line per round, then the spread, each against its target."""
    rows = []
    for number, r in enumerate(report["rounds"], 1):
        get, unix, lst = r["get_environment"], r["unix_socket_get_environment"], r["list_environments_100"]
        rows.append(
            (
                str(number),
                f"{get['daemon']['p50_ms']:.2f}/{get['daemon']['p99_ms']:.2f}",
                f"{get['echo']['p50_ms']:.2f}/{get['echo']['p99_ms']:.2f}",
                f"{unix['daemon']['p50_ms']:.2f}/{unix['daemon']['p99_ms']:.2f}",
                f"{r['rpc_per_s_16_callers']['daemon']}/{r['rpc_per_s_16_callers']['echo']}",
                f"{r['rpc_per_s_16_callers']['ratio']:.2f}",
                f"{unix['ratio_to_echo']:.2f}",
                f"{r['rpc_per_s_16_callers']['cpu_us_per_call']['daemon']}/{unix['cpu_us_per_call']}"
                f"/{r['rpc_per_s_16_callers']['cpu_us_per_call']['echo']}",
                f"{r['rpc_per_s_16_callers']['cpu_ratio']:.2f}/{unix['cpu_ratio']:.2f}",
                f"{lst['daemon']['p50_ms']:.2f}/{lst['daemon']['p99_ms']:.2f}",
                f"{lst['echo']['p50_ms']:.2f}/{lst['echo']['p99_ms']:.2f}",
            )
        )
    header = (
        "round",
        "get tcp p50/p99 ms",
        "echo p50/p99",
        "get unix p50/p99",
        "16 callers rpc/s daemon/echo",
        "ratio tcp",
        "ratio unix",
        "cpu us/call tcp/unix/echo",
        "cpu ratio tcp/unix",
        "list(100) p50/p99 ms",
        "echo p50/p99",
    )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]

    def spread(values: list[float], target: float, higher_is_better: bool = False) -> str:
        met = all(v >= target if higher_is_better else v <= target for v in values)
        worst = min(values) if higher_is_better else max(values)
        return (
            f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}  "
            f"(target {'>=' if higher_is_better else '<='} {target:g}: {'met' if met else 'missed'}, worst {worst:.2f})"
        )

    rounds = report["rounds"]
    lines += [
        "",
        f"{report['environments']} environments (deployed in {report['deploy_all_s']} s); response bytes: "
        f"get {report['bytes']['get_environment']}, list(100) {report['bytes']['list_environments_100']}",
        "get tcp p99 ms:      "
        + spread([r["get_environment"]["daemon"]["p99_ms"] for r in rounds], TARGETS["get_p99_ms"]),
        "get unix p99 ms:     "
        + spread([r["unix_socket_get_environment"]["daemon"]["p99_ms"] for r in rounds], TARGETS["get_p99_ms"]),
        "rpc/s ratio tcp:     "
        + spread([r["rpc_per_s_16_callers"]["ratio"] for r in rounds], TARGETS["rpc_ratio"], higher_is_better=True),
        "rpc/s ratio unix:    "
        + spread([r["unix_socket_get_environment"]["ratio_to_echo"] for r in rounds], TARGETS["rpc_ratio"], True),
        "cpu ratio tcp:       "
        + spread([r["rpc_per_s_16_callers"]["cpu_ratio"] for r in rounds], TARGETS["rpc_ratio"], True),
        "cpu ratio unix:      "
        + spread([r["unix_socket_get_environment"]["cpu_ratio"] for r in rounds], TARGETS["rpc_ratio"], True),
        "list(100) p99 ms:    "
        + spread([r["list_environments_100"]["daemon"]["p99_ms"] for r in rounds], TARGETS["list_p99_ms"]),
        f"idle CPU:            {report['idle_cpu']['percent_of_a_core']:.2f}% of a core over "
        f"{report['idle_cpu']['window_s']:g} s (target <= {TARGETS['idle_percent']:g}%)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=200, help="environments to create")
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per latency measurement")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each side of a throughput pair")
    parser.add_argument("--slices", type=int, default=10, help="throughput pairs (daemon, echo) per round")
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds on the same environments")
    parser.add_argument("--settle", type=float, default=10.0, help="pause before the idle measurement")
    parser.add_argument("--idle", type=float, default=30.0, help="length of the idle CPU measurement")
    parser.add_argument("--json", type=Path, help="also write the full figures here as JSON")
    parser.add_argument("--profile", type=Path, help="record the daemon under load with py-spy (raw format) here")
    parser.add_argument("--echo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        asyncio.run(_serve_echo(args.echo))
        return
    archives = build()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        run(tmp, archives, args)
    finally:
        shutil.rmtree(tmp)


def run(tmp: Path, archives: dict[str, Path], args: argparse.Namespace) -> None:
    """Start the echo server and the daemon, measure and print, then remove everything, whatever happened.

    The figures are printed (and written) before the cleanup, so that a failing cleanup does
    not lose them; the cleanup's failure still fails the run.
    """
    echo, echo_address = start_echo(tmp)
    daemon = None
    try:
        unix_socket = tmp / "api.sock"
        daemon = start_daemon(
            tmp,
            {
                "images": {"preload": [str(p) for p in archives.values()]},
                "log": {"level": "info"},
                "server": {"unix_socket": str(unix_socket)},
            },
        )
        pids = (daemon.process.pid, echo.pid)
        report = asyncio.run(measure(daemon.address, unix_socket, echo_address, pids, args))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        print(summary(report), flush=True)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
        if daemon is not None:
            try:
                clean_up(daemon, tmp, args.envs)
            finally:
                print(f"network instance of the daemon: {daemon_instance(daemon)}", flush=True)
                leftovers.report([daemon_instance(daemon)], [tmp])


def clean_up(daemon: DaemonProcess, tmp: Path, envs: int) -> None:
    """Delete every environment through the API, stop the daemon, sweep its network and containerd
    (as the integration tests do), then end whatever still runs from ``tmp`` and unmount it."""
    try:
        daemon.delete_all_environments(timeout=120 + 3 * envs)
    finally:
        try:
            daemon.stop()
        finally:
            try:
                try:
                    daemon.cleanup()
                except Exception as err:  # noqa: BLE001 - once more: a busy host fails a teardown step now and then
                    print(f"cleanup failed ({err!r}); trying once more", file=sys.stderr, flush=True)
                    time.sleep(5)
                    daemon.extra["cleaned"] = False
                    daemon.cleanup()
            finally:
                swept = sweep_leftovers(tmp)
                if any(swept.values()):
                    print(f"swept what the daemon left behind: {swept}", file=sys.stderr, flush=True)


def sweep_leftovers(tmp: Path) -> dict[str, int]:
    """End the processes this run started that still run from ``tmp`` (shims and their containers,
    log writers), by pid, then unmount what is mounted under it; count both."""
    ours = set(processes.processes_naming(str(tmp) + "/"))
    for pid in list(ours):
        ours.update(processes.descendants(pid))  # a shim's containers
    processes.end(ours)
    mounts = processes.mounts_under(tmp)
    processes.unmount_under(tmp)
    return {"processes": len(ours), "mounts": len(mounts)}


if __name__ == "__main__":
    main()
