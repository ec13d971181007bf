"""Composition root: builds the store, runtime, network, orchestrator and API, then serves.

Shutdown order (on SIGTERM or SIGINT): health NOT_SERVING -> the API stops accepting and gives
in-flight RPCs the configured grace -> the orchestrator parks its operations (they resume on the
next start) -> the runtime client closes -> a managed containerd stops (its containers keep
running under their shims) -> the store closes last.

One cohesive thing, about a screen: the composition root, where every implementation is chosen
and every daemon setting is converted into what its component takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler import domain, heap, log
from scheduler.api.server import ApiServer
from scheduler.cluster.base import Fleet
from scheduler.cluster.fence import Fence
from scheduler.cluster.local import SingleNode, host_capacity
from scheduler.cluster.node import Node
from scheduler.cluster.placement import Strategy
from scheduler.config import ImageSettings, Settings
from scheduler.launch import Begun, begin
from scheduler.metrics.collector import StateCollector
from scheduler.metrics.http import MetricsServer
from scheduler.metrics.recorder import Recorder
from scheduler.network.cni import CniNetwork, CniSettings
from scheduler.orchestrator.backup import Backups
from scheduler.orchestrator.backup_schedule import BackupSchedule
from scheduler.orchestrator.events import EventBus, EventFeed
from scheduler.orchestrator.ledger import Ledger, Owns, owns_all
from scheduler.orchestrator.observer import Observers
from scheduler.orchestrator.orchestrator import Orchestrator, OrchestratorSettings
from scheduler.orchestrator.reconcile import Reconciler
from scheduler.orchestrator.sleeper import SleepPolicy
from scheduler.orchestrator.supervisor import Supervisor
from scheduler.orchestrator.templates import Templates, TemplateSettings
from scheduler.orchestrator.timeline import Timeline
from scheduler.reload import LiveTargets, Reloader
from scheduler.runtime.containerd.image_options import ImageOptions, RegistryOptions
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from scheduler.runtime.preload import check_archives, preload_after
from scheduler.service import EnvironmentService
from scheduler.stacks.catalog import default_catalog
from scheduler.storage.base import StateStore
from scheduler.storage.events import EventLog, SqliteEventLog
from scheduler.storage.sqlite import SqliteStateStore
from scheduler.storage.timeline import SqliteTimeline
from scheduler.systemd import Notifier
from scheduler.volumes.filesystem import prepare as prepare_volume_filesystem
from scheduler.volumes.host import HostVolumeStore
from scheduler.volumes.templates import TemplateStore

if TYPE_CHECKING:
    from scheduler.cluster.member import MembershipSettings
    from scheduler.storage.etcd import EtcdClient

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
    reloader: Reloader
    startup: dict[str, float]
    """Seconds each start-up step took (``imports``: from exec to :func:`build`), logged at ready."""


class _Phases:
    """Where the time from exec to SERVING goes, step by step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"imports": round(_process_age(), 3)}
        self._last = time.monotonic()

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = round(now - self._last, 3)
        self._last = now


def _process_age() -> float:
    """Seconds since this process was started (exec), from /proc; 0 when unknown."""
    try:
        with open("/proc/self/stat") as handle:
            started_ticks = int(handle.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def build(
    settings: Settings,
    load: Callable[[], Settings] | None = None,
    begun: Begun | None = None,
) -> AsyncIterator[Daemon]:
    """Build and start every component; stop them in reverse order on exit.

    ``load`` re-reads the configuration for a reload (SIGHUP); without it a reload changes nothing.
    ``begun`` is what :func:`~scheduler.launch.begin` returned, when the caller called it already.
    """
    phases = _Phases()
    data_dir = settings.data_dir
    async with AsyncExitStack() as stack:
        begun = begun or begin(settings)
        stack.callback(begun.lock.release)
        managed = begun.containerd
        if managed is not None:
            stack.push_async_callback(managed.stop)
        etcd = etcd_client(settings)
        store: StateStore
        if etcd is not None:
            from scheduler.storage.etcd.compactor import Compactor
            from scheduler.storage.etcd.store import EtcdStateStore

            stack.push_async_callback(etcd.close)
            store = EtcdStateStore(etcd, settings.cluster.etcd.prefix)
            if settings.cluster.etcd.compaction_interval:
                compactor = Compactor(etcd, settings.cluster.etcd.compaction_interval)
                compactor.start()
                stack.push_async_callback(compactor.close)
        else:
            store = await SqliteStateStore.open(settings.state_db_path)
        stack.push_async_callback(store.close)
        ledger = await Ledger.open(store)
        phases.mark("store")

        net = settings.network
        network_settings = CniSettings(
            pool=net.pool,
            subnet_prefix=net.subnet_prefix,
            port_range=net.port_range,
            host_ip=net.host_ip,
            cni_bin_dir=Path(net.cni_bin_dir),
        )
        network = CniNetwork(data_dir / "network", network_settings, instance=net.instance)

        async def containerd_up() -> ContainerdRuntime:
            socket = settings.containerd.socket
            if managed is not None:
                socket = str(await managed.start())
            runtime = await ContainerdRuntime.connect(
                socket,
                namespace=settings.containerd.namespace,
                state_dir=data_dir / "runtime",
                snapshotter=settings.containerd.snapshotter,
                runtime_name=settings.containerd.runtime,
                images=image_options(settings.images),
                call_timeout=settings.containerd.call_timeout,
            )
            stack.push_async_callback(runtime.close)
            # Nothing of ours runs yet: any lease of ours is a killed predecessor's, pinning content.
            swept = await runtime.sweep_leases()
            if swept:
                _log.info("leases.swept", leases=swept)
            # Likewise a shim whose task containerd never recorded (a create cut short by a kill).
            orphans = await runtime.sweep_orphan_shims(socket)
            if orphans:
                _log.info("shims.swept", tasks=orphans)
            return runtime

        async def network_up() -> None:
            await network.start()
            stack.push_async_callback(network.close)

        # containerd (its start, the sweeps) and the network's start (bridges, iptables) wait on
        # different things, and neither needs the other: side by side.
        async with asyncio.TaskGroup() as group:
            connecting = group.create_task(containerd_up())
            group.create_task(network_up())
        runtime = connecting.result()
        recorder = Recorder()
        runtime.client.call_observer = recorder.containerd_call
        phases.mark("containerd_network")
        # Image archives are imported after the API serves; a deploy that needs one of their images
        # meanwhile (a resumed one included) waits for the import in ensure_image.
        archives = [Path(p) for p in settings.images.preload]
        check_archives(archives)
        serving: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        preloading = asyncio.create_task(
            preload_after(serving, runtime, archives, data_dir / "preloaded.json"), name="preload"
        )
        runtime.preloading(preloading)
        stack.push_async_callback(_cancel, preloading)

        # The event log outlives restarts, so watchers resume across them; flushed at shutdown.
        event_log: EventLog
        feed: EventFeed | None = None
        if etcd is not None:
            # Each node writes its events under a key range of its own; WatchEvents on any node
            # reads every node's, with etcd's revisions as the cursor.
            from scheduler.storage.etcd.events import EtcdEventLog
            from scheduler.storage.etcd.feed import EtcdEventFeed

            etcd_log = await EtcdEventLog.open(
                etcd, f"{settings.cluster.etcd.prefix}events/{settings.network.instance}/"
            )
            stack.push_async_callback(etcd_log.drain)
            event_log = etcd_log
            feed = EtcdEventFeed(etcd, f"{settings.cluster.etcd.prefix}events/")
        else:
            event_log = await asyncio.to_thread(SqliteEventLog, data_dir / "events.db")
        events = EventBus(log=event_log)
        stack.callback(events.close)
        volume_fs = await asyncio.to_thread(
            prepare_volume_filesystem, data_dir, settings.volumes.filesystem, settings.volumes.image_size_bytes
        )
        volumes = HostVolumeStore(volume_fs.volumes)
        templates = Templates(
            TemplateStore(volume_fs.templates),
            volumes,
            runtime,
            TemplateSettings(
                enabled=settings.templates.enabled,
                unused_after=timedelta(seconds=settings.templates.unused_after),
                gc_interval=timedelta(seconds=settings.templates.gc_interval),
                spares=settings.templates.spares,
                overlay=settings.templates.overlay and not volume_fs.reflink,
            ),
        )
        await templates.start()
        stack.push_async_callback(templates.close)
        timeline = Timeline(await asyncio.to_thread(SqliteTimeline, data_dir / "timeline.db"))
        stack.push_async_callback(timeline.close)
        me = this_node(settings)
        # In a fleet this daemon runs only the environments placed on its node.
        fence = Fence(me.name, failover_grace=timedelta(seconds=settings.cluster.failover_grace))
        owns: Owns = owns_all
        if etcd is not None:
            owns = fence.owns if settings.cluster.fence else (lambda env: env.node == me.name)
        orchestrator = Orchestrator(
            ledger,
            runtime,
            network,
            volumes,
            events,
            OrchestratorSettings(
                logs_dir=data_dir / "logs",
                log_max_bytes=settings.container_logs.max_bytes,
                log_max_files=settings.container_logs.max_files,
                pull_policy=domain.PullPolicy(settings.images.pull_policy),
                host_ip=settings.network.host_ip,
                sleep_keeps_tasks=settings.sleep.keep_tasks,
                deploy_concurrency=settings.deploys.concurrency,
                admission_hold=settings.deploys.hold_seconds,
            ),
            observer=Observers(recorder, timeline),
            sleep=SleepPolicy(
                idle_after=timedelta(seconds=settings.sleep.idle_after),
                check_interval=settings.sleep.check_interval,
                wake_deadline=settings.sleep.wake_deadline,
                max_pending=settings.sleep.max_pending,
            ),
            templates=templates,
            owns=owns,
        )
        # The supervisor subscribes before reconciling, so that no exit falls between the two.
        supervisor = Supervisor(ledger, runtime, network, events, orchestrator, observer=recorder, owns=owns)
        await supervisor.start()
        stack.push_async_callback(supervisor.close)
        phases.mark("orchestrator")
        reconciler = Reconciler(ledger, runtime, network, supervisor, orchestrator, owns=owns)
        await reconciler.run()
        await orchestrator.start()
        stack.push_async_callback(orchestrator.close)
        backup_dir = Path(settings.cluster.backup_dir) if settings.cluster.backup_dir else data_dir / "backups"
        backups = Backups(store, runtime, volumes, backup_dir)
        fleet: Fleet = SingleNode(me, ledger)
        if etcd is not None:
            from scheduler.cluster.member import FleetMember

            member = FleetMember(
                etcd,
                settings.cluster.etcd.prefix,
                me,
                ledger,
                orchestrator,
                reconciler,
                membership(settings),
                backups,
                (fence, runtime) if settings.cluster.fence else None,
            )
            await member.start()
            stack.push_async_callback(member.close)
            fleet = member.fleet
        collecting = asyncio.create_task(templates.run_collector(lambda: [e.name for e in ledger.all()]))
        stack.push_async_callback(_cancel, collecting)
        phases.mark("reconcile")

        service = EnvironmentService(
            ledger,
            orchestrator,
            events,
            default_catalog(),
            settings.limits,
            backups,
            timeline,
            fleet=fleet,
            dispatch=etcd is None,
            feed=feed,
        )
        collector = StateCollector(ledger, runtime, settings.metrics.interval)
        metrics = MetricsServer(recorder, collector)
        await metrics.start(settings.metrics.listen)
        stack.push_async_callback(metrics.stop)

        server = ApiServer(service, settings.server, settings.auth, observer=recorder)
        await server.start()
        stack.push_async_callback(server.stop, settings.server.shutdown_grace)
        await server.ready()
        serving.set_result(None)

        async def images_ready() -> None:
            await asyncio.wait([preloading])
            await server.images_ready()
            # The start is over (the preload's check included): what it freed leaves the RSS.
            heap.trim()

        reporting = asyncio.create_task(images_ready(), name="images-ready")
        stack.push_async_callback(_cancel, reporting)
        phases.mark("api")

        def apply_images(images: ImageSettings) -> None:
            runtime.image_service().settings = image_options(images)

        reloader = Reloader(
            settings, load or (lambda: settings), LiveTargets(service, server, apply_images, metrics, collector)
        )
        server.set_reload(reloader.reload)
        schedule = BackupSchedule(store, backups, settings.backups, owns=owns)
        schedule.start()
        stack.push_async_callback(schedule.close)
        reloader.on_apply(lambda new: setattr(schedule, "settings", new.backups))
        yield Daemon(settings, server, service, orchestrator, runtime, network, metrics, reloader, phases.seconds)


def image_options(images: ImageSettings) -> ImageOptions:
    """The image service's own view of the ``images`` section."""
    return ImageOptions(
        pull_policy=domain.PullPolicy(images.pull_policy),
        registries={
            host: RegistryOptions(tuple(r.mirrors), r.insecure, r.username, r.password)
            for host, r in images.registries.items()
        },
        allowed_registries=tuple(images.allowed_registries),
    )


def membership(settings: Settings) -> MembershipSettings:
    """How this node takes part in its fleet, from ``cluster``."""
    from scheduler.cluster.member import MembershipSettings

    cluster = settings.cluster
    return MembershipSettings(
        lease_ttl=cluster.lease_ttl,
        failover_grace=timedelta(seconds=cluster.failover_grace),
        strategy=Strategy(cluster.placement),
    )


def this_node(settings: Settings) -> Node:
    """This daemon as a node: its name, address and what it offers, from ``cluster.node``."""
    node = settings.cluster.node
    return Node(
        name=node.name or socket.gethostname(),
        address=node.advertise or settings.server.listen or f"unix:{settings.server.unix_socket}",
        capacity=host_capacity(
            node.cpu_millis, node.memory_bytes, settings.network.port_range, settings.limits.max_environments
        ),
        labels=dict(node.labels),
        pool=settings.network.pool,
        port_range=settings.network.port_range,
        started_at=datetime.now(UTC),
    )


async def run(
    settings: Settings,
    load: Callable[[], Settings] | None = None,
    begun: Begun | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, reloading ``load()`` on SIGHUP; returns the exit code.

    Under systemd (``Type=notify``) it reports READY once serving, RELOADING around a reload,
    WATCHDOG while the event loop turns, and STOPPING when shutdown begins.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background: set[asyncio.Task[None]] = set()
    try:
        async with build(settings, load, begun) as daemon:
            status = f"serving on {settings.server.listen or settings.server.unix_socket}"

            async def reload() -> None:
                notifier.reloading()
                report = await daemon.reloader.reload()
                notifier.ready(f"{status}; last reload: {'refused: ' + report.error if report.error else 'applied'}")

            def spawn(coroutine: Coroutine[Any, Any, None], name: str) -> None:
                task = asyncio.create_task(coroutine, name=name)
                background.add(task)
                task.add_done_callback(background.discard)

            loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload(), "reload"))
            if notifier.watchdog_seconds:
                spawn(_watchdog(notifier, notifier.watchdog_seconds / 2), "watchdog")
            _log.info(
                "daemon.ready",
                listen=settings.server.listen,
                port=daemon.server.bound_port,
                seconds=round(sum(daemon.startup.values()), 3),
                startup=daemon.startup,
            )
            notifier.ready(status)
            await stop.wait()
            notifier.stopping()
            loop.remove_signal_handler(signal.SIGHUP)
            for task in list(background):
                if task.get_name() == "watchdog":
                    task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            _log.info("daemon.stopping", grace=settings.server.shutdown_grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    _log.info("daemon.stopped")
    return 0


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _watchdog(notifier: Notifier, every: float) -> None:
    """Ping systemd's watchdog while the event loop turns; a hung loop gets the unit restarted."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(every)


def etcd_client(settings: Settings) -> EtcdClient | None:
    """The client of the fleet's etcd cluster, or None in the single-host mode (no endpoints)."""
    etcd = settings.cluster.etcd
    if not etcd.endpoints:
        return None
    # Imported here: a single host never loads the etcd client and its stubs (faster start).
    from scheduler.storage.etcd import EtcdClient, EtcdOptions

    tls = etcd.tls
    return EtcdClient(
        EtcdOptions(
            endpoints=tuple(etcd.endpoints),
            dial_timeout=etcd.dial_timeout,
            retry_deadline=etcd.retry_deadline,
            ca_file=Path(tls.ca_file) if tls.ca_file else None,
            cert_file=Path(tls.cert_file) if tls.cert_file else None,
            key_file=Path(tls.key_file) if tls.key_file else None,
        )
    )
