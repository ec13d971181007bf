"""Composition root: builds the store, runtime, network, orchestrator and API, then serves.

Shutdown order (on SIGTERM or SIGINT): health NOT_SERVING -> the API stops accepting and gives
in-flight RPCs the configured grace -> the orchestrator parks its operations (they resume on the
next start) -> the runtime client closes -> a managed containerd stops (its containers keep
running under their shims) -> the store closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from scheduler import domain, log
from scheduler.api.server import ApiServer
from scheduler.config import Settings
from scheduler.metrics.collector import StateCollector
from scheduler.metrics.http import MetricsServer
from scheduler.metrics.recorder import Recorder
from scheduler.network.cni import CniNetwork
from scheduler.orchestrator.events import EventBus
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator, OrchestratorSettings
from scheduler.orchestrator.reconcile import Reconciler
from scheduler.orchestrator.supervisor import Supervisor
from scheduler.runtime.containerd.managed import ManagedContainerd
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from scheduler.runtime.preload import preload
from scheduler.service import EnvironmentService
from scheduler.stacks.catalog import default_catalog
from scheduler.storage.events import SqliteEventLog
from scheduler.storage.sqlite import SqliteStateStore
from scheduler.volumes import VolumeStore

_log = log.get("daemon")


@dataclass
class Daemon:
    """The running pieces, for tests that drive the daemon in-process."""

    settings: Settings
    server: ApiServer
    service: EnvironmentService
    orchestrator: Orchestrator
    runtime: ContainerdRuntime
    network: CniNetwork
    metrics: MetricsServer


@asynccontextmanager
async def build(settings: Settings) -> AsyncIterator[Daemon]:
    """Build and start every component; stop them in reverse order on exit."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        store = await SqliteStateStore.open(settings.state_db_path)
        stack.push_async_callback(store.close)
        ledger = await Ledger.open(store)

        socket = settings.containerd.socket
        if not socket:
            managed = ManagedContainerd(data_dir / "containerd", binary=settings.containerd.binary)
            socket = str(await managed.start())
            stack.push_async_callback(managed.stop)
        runtime = await ContainerdRuntime.connect(
            socket,
            namespace=settings.containerd.namespace,
            state_dir=data_dir / "runtime",
            snapshotter=settings.containerd.snapshotter,
            runtime_name=settings.containerd.runtime,
            images=settings.images,
            call_timeout=settings.containerd.call_timeout,
        )
        stack.push_async_callback(runtime.close)
        registry = CollectorRegistry()
        for standard in (ProcessCollector, PlatformCollector, GCCollector):
            standard(registry=registry)
        recorder = Recorder(registry)
        runtime.client.call_observer = recorder.containerd_call
        released = await runtime.release_stale_leases()
        if released:
            _log.info("leases.released", count=released, reason="left by a previous run")
        await preload(runtime, [Path(p) for p in settings.images.preload], data_dir / "preloaded.json")

        network = CniNetwork(data_dir / "network", settings.network, instance=settings.network.instance)
        await network.start()
        stack.push_async_callback(network.close)

        # The event log outlives restarts, so watchers resume across them; flushed at shutdown.
        events = EventBus(log=await asyncio.to_thread(SqliteEventLog, data_dir / "events.db"))
        stack.callback(events.close)
        orchestrator = Orchestrator(
            ledger,
            runtime,
            network,
            VolumeStore(data_dir / "volumes"),
            events,
            OrchestratorSettings(
                logs_dir=data_dir / "logs",
                log_max_bytes=settings.container_logs.max_bytes,
                log_max_files=settings.container_logs.max_files,
                pull_policy=domain.PullPolicy(settings.images.pull_policy),
                host_ip=settings.network.host_ip,
            ),
            observer=recorder,
        )
        # The supervisor subscribes before reconciling, so that no exit falls between the two.
        supervisor = Supervisor(ledger, runtime, network, events, orchestrator, observer=recorder)
        await supervisor.start()
        stack.push_async_callback(supervisor.close)
        await Reconciler(ledger, runtime, network, supervisor, orchestrator).run()
        await orchestrator.start()
        stack.push_async_callback(orchestrator.close)

        service = EnvironmentService(ledger, orchestrator, events, default_catalog(), settings.limits)
        collector = StateCollector(ledger, runtime, settings.metrics.interval)
        registry.register(collector)
        metrics = MetricsServer(registry, collector)
        await metrics.start(settings.metrics.listen)
        stack.push_async_callback(metrics.stop)

        server = ApiServer(service, settings.server.listen, settings.server.unix_socket, observer=recorder)
        await server.start()
        stack.push_async_callback(server.stop, settings.server.shutdown_grace)
        await server.ready()
        yield Daemon(settings, server, service, orchestrator, runtime, network, metrics)


async def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then shut down in order; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with build(settings) as daemon:
            _log.info("daemon.ready", listen=settings.server.listen, port=daemon.server.bound_port)
            await stop.wait()
            _log.info("daemon.stopping", grace=settings.server.shutdown_grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    _log.info("daemon.stopped")
    return 0
