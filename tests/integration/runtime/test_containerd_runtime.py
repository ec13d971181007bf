"""ContainerdRuntime against a real containerd: containers, tasks, exec, stop, events, metrics, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from scheduler.runtime.containerd import labels as L
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import containers_pb2
from scheduler.runtime.containerd._gen.containerd.services.tasks.v1 import tasks_pb2
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.events import TaskEventStream
from scheduler.runtime.containerd.runtime import ContainerdRuntime

pytestmark = pytest.mark.integration

MakeContainer = Callable[..., Awaitable[domain.ContainerConfig]]
LOOP = "trap 'exit 42' TERM; while true; do sleep 0.1; done"


@pytest.fixture
async def make_container(
    containerd_runtime: ContainerdRuntime, busybox_image: domain.Image, tmp_path: Path
) -> AsyncIterator[MakeContainer]:
    """Create (and optionally start) containers; every one is deleted at teardown."""
    created: list[str] = []

    async def make(script: str = LOOP, *, start: bool = True, **overrides: object) -> domain.ContainerConfig:
        cid = f"t-{os.urandom(5).hex()}"
        config = domain.ContainerConfig(
            id=cid,
            image=busybox_image,
            command=("sh", "-c", script),
            log_dir=str(tmp_path / cid),
            labels={L.ENV: "itest", L.SERVICE: "svc"},
        )
        config = replace(config, **overrides)  # type: ignore[arg-type]
        await containerd_runtime.create(config)
        created.append(config.id)
        if start:
            await containerd_runtime.start(config.id)
        return config

    yield make
    for cid in created:
        await containerd_runtime.delete(cid)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _read(path: str) -> str:
    """The file's text; empty while it does not exist (the log writer creates it when it has the task's pipes)."""
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


async def test_stdout_and_stderr_go_to_separate_log_files(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    config = await make_container(f"echo to-out; echo to-err >&2; {LOOP}")
    out, err = os.path.join(config.log_dir, "stdout.log"), os.path.join(config.log_dir, "stderr.log")
    await _wait_for(lambda: "to-out" in _read(out) and "to-err" in _read(err))
    # The shim's log writer stamps each line: "<RFC 3339 nanosecond time> <stream> F <text>".
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F to-out\n", _read(out))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stderr F to-err\n", _read(err))
    info = await containerd_runtime.list({L.SERVICE: "svc"})
    mine = [i for i in info if i.id == config.id]
    assert mine and mine[0].task_state is domain.TaskState.RUNNING and mine[0].pid > 0
    assert mine[0].labels[L.OWNER] == L.OWNER_VALUE
    # runc keeps its state under the runtime's own directory, not the host-wide /run/containerd/runc.
    namespace = containerd_runtime.client.namespace
    assert (containerd_runtime.state_dir / "runc" / namespace / config.id / "state.json").is_file()
    assert not Path(f"/run/containerd/runc/{namespace}/{config.id}").exists()


async def test_exec_returns_exit_code_and_output(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    config = await make_container(env={"GREETING": "hello"})
    result = await containerd_runtime.exec(
        config.id, ["sh", "-c", "echo $GREETING; echo oops >&2; exit 7"], timedelta(seconds=10)
    )
    assert result.exit_code == 7
    assert "hello" in result.output and "oops" in result.output
    missing = await containerd_runtime.exec(config.id, ["/no/such/binary"], timedelta(seconds=10))
    assert missing.exit_code == 127
    with pytest.raises(DeadlineExceeded):
        await containerd_runtime.exec(config.id, ["sleep", "30"], timedelta(milliseconds=300))
    # The timed-out exec was killed and removed: another one runs fine.
    again = await containerd_runtime.exec(config.id, ["true"], timedelta(seconds=10))
    assert again.exit_code == 0


async def test_exec_of_50_mb_output_keeps_only_a_tail_and_writes_nothing_to_disk(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    config = await make_container()
    exec_dir = Path(containerd_runtime.tasks.exec_dir)
    largest = 0

    def disk_use() -> int:
        return sum(p.stat().st_size for p in exec_dir.rglob("*") if p.is_file()) if exec_dir.is_dir() else 0

    run = asyncio.ensure_future(
        containerd_runtime.exec(
            config.id, ["sh", "-c", "head -c 50000000 /dev/zero; echo THE-END; exit 3"], timedelta(seconds=120)
        )
    )
    while not run.done():
        largest = max(largest, disk_use())
        await asyncio.sleep(0.05)
    result = run.result()
    assert result.exit_code == 3
    assert len(result.output) == 64 * 1024
    assert result.output.endswith("THE-END\n")
    assert largest < 1024 * 1024, f"exec output took {largest} bytes on disk"


async def test_stop_with_trap_is_fast_and_without_trap_needs_sigkill(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    trapping = await make_container(LOOP)
    started = time.monotonic()
    status = await containerd_runtime.stop(trapping.id, timedelta(seconds=5))
    assert status.code == 42
    assert time.monotonic() - started < 2.0

    # sh as PID 1 without a trap ignores SIGTERM: the runtime must SIGKILL after the grace.
    stubborn = await make_container("while true; do sleep 0.1; done")
    started = time.monotonic()
    status = await containerd_runtime.stop(stubborn.id, timedelta(milliseconds=700))
    elapsed = time.monotonic() - started
    assert status.code == 137
    assert 0.6 <= elapsed < 5.0
    assert await containerd_runtime.task_pid(stubborn.id) is None


async def test_a_stop_signal_dropped_while_the_process_starts_is_sent_again(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    # sh is its pid namespace's init: until its trap is set the kernel drops SIGTERM, and the
    # signal is sent at once. Without a second one it would be SIGKILLed (137) after the grace.
    late = await make_container("sleep 0.3; trap 'exit 0' TERM; while :; do sleep 0.1; done")
    status = await containerd_runtime.stop(late.id, timedelta(seconds=30))
    assert status.code == 0


async def test_exit_and_start_events_arrive(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    stream = containerd_runtime.events()
    assert isinstance(stream, TaskEventStream)
    await stream.connected()
    try:
        config = await make_container("sleep 0.3; exit 5")
        seen: list[domain.TaskEvent] = []
        async with asyncio.timeout(10):
            async for event in stream:
                if event.container_id == config.id:
                    seen.append(event)
                    if event.kind is domain.TaskEventKind.EXIT:
                        break
        kinds = [e.kind for e in seen]
        assert domain.TaskEventKind.START in kinds
        assert seen[-1].exit_code == 5
        status = await containerd_runtime.wait(config.id)
        assert status.code == 5 and not status.oom_killed
    finally:
        await stream.aclose()


async def test_oom_event_and_oom_exit_status(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    stream = containerd_runtime.events()
    await stream.connected()
    try:
        hog = 'x=a; while true; do x="$x$x"; done'
        config = await make_container(hog, resources=domain.Resources(memory_bytes=16 * 1024 * 1024))
        kinds: list[domain.TaskEventKind] = []
        async with asyncio.timeout(30):
            async for event in stream:
                if event.container_id == config.id:
                    kinds.append(event.kind)
                    if event.kind is domain.TaskEventKind.EXIT:
                        assert event.exit_code == 137
                        break
        assert domain.TaskEventKind.OOM in kinds
        status = await containerd_runtime.wait(config.id)
        assert status.code == 137 and status.oom_killed
    finally:
        await stream.aclose()


async def test_metrics_decode_cpu_memory_and_pids(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    res = domain.Resources(memory_bytes=64 * 1024 * 1024, pids=64, cpu_millis=500)
    config = await make_container("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; " + LOOP, resources=res)
    await asyncio.sleep(0.3)
    samples = await containerd_runtime.metrics([config.id, "t-not-there"])
    assert [s.container_id for s in samples] == [config.id]
    sample = samples[0]
    assert sample.cpu_usage_ns > 1_000_000
    assert 0 < sample.memory_usage_bytes < res.memory_bytes
    assert sample.memory_limit_bytes == res.memory_bytes
    assert sample.pids_current >= 1 and sample.pids_limit == 64
    # The CPU limit reached the cgroup: 500 millicores = 50000us per 100000us.
    ns = containerd_runtime.client.namespace
    quota = Path(f"/sys/fs/cgroup/cpu,cpuacct/{ns}/{config.id}/cpu.cfs_quota_us")
    if not quota.exists():
        quota = Path(f"/sys/fs/cgroup/cpu/{ns}/{config.id}/cpu.cfs_quota_us")
    if quota.exists():
        assert quota.read_text().strip() == "50000"
    else:
        assert Path(f"/sys/fs/cgroup/{ns}/{config.id}/cpu.max").read_text().split()[:2] == ["50000", "100000"]


async def test_user_hostname_mounts_readonly_root_and_shared_netns(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    first = await make_container(
        user="app",
        hostname="web-0",
        read_only_rootfs=True,
        mounts=(domain.Mount(destination="/data", source=str(shared), options=("rbind", "ro")),),
    )
    ten = timedelta(seconds=10)
    ids = await containerd_runtime.exec(first.id, ["id"], ten)
    assert "uid=1000(app) gid=1000(app)" in ids.output and "2000(extra)" in ids.output
    assert (await containerd_runtime.exec(first.id, ["hostname"], ten)).output.strip() == "web-0"
    assert (await containerd_runtime.exec(first.id, ["cat", "/data/hello.txt"], ten)).output == "from the host\n"
    readonly = await containerd_runtime.exec(first.id, ["touch", "/new-file"], ten)
    assert readonly.exit_code != 0
    pid = await containerd_runtime.task_pid(first.id)
    assert pid is not None
    second = await make_container(netns_path=f"/proc/{pid}/ns/net")
    net1 = await containerd_runtime.exec(first.id, ["readlink", "/proc/self/ns/net"], ten)
    net2 = await containerd_runtime.exec(second.id, ["readlink", "/proc/self/ns/net"], ten)
    assert net1.output.strip() and net1.output == net2.output


async def test_unknown_user_and_bad_input_raise_named_errors(
    containerd_runtime: ContainerdRuntime, busybox_image: domain.Image, make_container: MakeContainer
) -> None:
    with pytest.raises(InvalidArgument) as bad_user:
        await make_container(user="nosuchuser")
    assert bad_user.value.details["field"] == "user"
    with pytest.raises(InvalidArgument) as bad_id:
        await containerd_runtime.create(domain.ContainerConfig(id="bad id!", image=busybox_image))
    assert bad_id.value.details["field"] == "container.id"
    with pytest.raises(NotFound, match="t-missing"):
        await containerd_runtime.start("t-missing")
    with pytest.raises(NotFound):
        await containerd_runtime.stop("t-missing", timedelta(seconds=1))
    with pytest.raises(NotFound):
        await containerd_runtime.exec("t-missing", ["true"], timedelta(seconds=1))
    with pytest.raises(NotFound):
        await containerd_runtime.wait("t-missing")
    assert await containerd_runtime.task_pid("t-missing") is None
    await containerd_runtime.delete("t-missing")  # idempotent
    config = await make_container(start=False)
    with pytest.raises(AlreadyExists):
        await containerd_runtime.create(config)
    with pytest.raises(InvalidArgument) as bad_signal:
        await containerd_runtime.stop(config.id, timedelta(seconds=1), signal="SIGNOPE")
    assert bad_signal.value.details["field"] == "signal"
    unpacked = replace(busybox_image, chain_id="sha256:" + "0" * 64)
    with pytest.raises(NotFound, match="snapshot"):
        await containerd_runtime.create(domain.ContainerConfig(id="t-nolayer", image=unpacked))


async def test_everything_is_removed_after_delete(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    before = await containerd_runtime.resources()
    configs = [await make_container() for _ in range(2)]
    await make_container(start=False)
    during = await containerd_runtime.resources()
    assert during["containers"] == before["containers"] + 3
    assert during["tasks"] == before["tasks"] + 2
    assert during["active_snapshots"] == before["active_snapshots"] + 3
    # An orphaned task: its record deleted first, as containerd allows.
    await containerd_runtime.client.containers.delete(containers_pb2.DeleteContainerRequest(id=configs[0].id))
    for info in await containerd_runtime.list({L.ENV: "itest"}):
        await containerd_runtime.delete(info.id)
    await containerd_runtime.delete(configs[0].id)
    after = await containerd_runtime.resources()
    assert after == before


async def test_task_survives_client_disconnect(
    containerd_socket: str, containerd_namespace: str, make_container: MakeContainer, tmp_path: Path
) -> None:
    config = await make_container()
    first = await ContainerdRuntime.connect(containerd_socket, namespace=containerd_namespace, state_dir=tmp_path)
    pid = await first.task_pid(config.id)
    await first.close()
    second = await ContainerdRuntime.connect(containerd_socket, namespace=containerd_namespace, state_dir=tmp_path)
    try:
        assert pid is not None and await second.task_pid(config.id) == pid
        assert (await second.exec(config.id, ["true"], timedelta(seconds=10))).exit_code == 0
    finally:
        await second.close()


async def test_missing_socket_is_unavailable_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="does not exist"):
        await ContainerdClient.connect(str(tmp_path / "nope.sock"), "x")
    (tmp_path / "file.sock").write_text("")
    with pytest.raises(Unavailable, match="not a unix socket"):
        await ContainerdClient.connect(f"unix://{tmp_path / 'file.sock'}", "x")
    with pytest.raises(InvalidArgument, match="absolute"):
        await ContainerdClient.connect("relative.sock", "x")


async def test_sweep_leases_removes_a_killed_predecessors_leases_and_only_ours(
    containerd_runtime: ContainerdRuntime,
) -> None:
    from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2
    from scheduler.runtime.containerd.client import LEASE_PREFIX

    client = containerd_runtime.client
    before = {lease.id for lease in (await client.leases.list(leases_pb2.ListRequest())).leases}
    ours, foreign = f"{LEASE_PREFIX}killed{os.getpid()}", f"other-{os.getpid()}"
    # What a daemon killed inside ContainerdClient.lease() leaves: the lease, never deleted.
    for lease_id in (ours, foreign):
        await client.leases.create(leases_pb2.CreateRequest(id=lease_id))
    try:
        swept = await containerd_runtime.sweep_leases()
        left = {lease.id for lease in (await client.leases.list(leases_pb2.ListRequest())).leases}
        assert ours in swept and ours not in left
        assert foreign in left and foreign not in swept
        assert left - before == {foreign}
    finally:
        await client.leases.delete(leases_pb2.DeleteRequest(id=foreign))


def _fake_shim(namespace: str, task_id: str, socket: str) -> subprocess.Popen[bytes]:
    """A process that looks like a shim in /proc (argv[0] and options), with a child like its log writer."""
    # Started under a shim's name, python finds no stdlib beyond builtins: fork and exec only.
    code = "import os, time\nif os.fork() == 0: os.execv('/bin/sleep', ['sleep', '60'])\ntime.sleep(60)"
    argv = ["containerd-shim-runc-v2", "-c", code, "-namespace", namespace, "-id", task_id, "-address", socket]
    return subprocess.Popen(argv, executable=sys.executable)


async def test_sweep_orphan_shims_ends_shims_without_a_task_and_only_those(
    containerd_runtime: ContainerdRuntime, containerd_socket: str, make_container: MakeContainer
) -> None:
    from tests.support.processes import alive, descendants

    running = await make_container()
    namespace = containerd_runtime.client.namespace
    orphan = _fake_shim(namespace, f"gone-{os.getpid()}", containerd_socket)
    with_task = _fake_shim(namespace, running.id, containerd_socket)
    elsewhere = _fake_shim("another-namespace", f"gone-{os.getpid()}", containerd_socket)
    try:
        await _wait_for(lambda: all(descendants(p.pid) for p in (orphan, with_task, elsewhere)), timeout=10)
        orphan_children = descendants(orphan.pid)
        swept = await containerd_runtime.sweep_orphan_shims(containerd_socket)
        assert swept == [f"gone-{os.getpid()}"]
        assert orphan.wait(10) == -signal.SIGKILL
        await _wait_for(lambda: not any(alive(pid) for pid in orphan_children), timeout=10)
        assert with_task.poll() is None and elsewhere.poll() is None
        # The real shim of the running task is untouched: the task still answers.
        assert await containerd_runtime.task_pid(running.id)
    finally:
        for process in (orphan, with_task, elsewhere):
            for pid in [*descendants(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(10)


def _shim_of(pid: int) -> int:
    """The parent of a task's process: its shim (a subreaper)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


async def test_a_group_shares_one_shim_that_outlives_its_first_task_and_no_sweep_ends_it(
    containerd_runtime: ContainerdRuntime, containerd_socket: str, make_container: MakeContainer
) -> None:
    group = f"g-{os.urandom(4).hex()}"
    first = await make_container(group=group)
    second = await make_container(group=group)
    alone = await make_container()
    pids = {c.id: await containerd_runtime.task_pid(c.id) for c in (first, second, alone)}
    shims = {cid: _shim_of(pid) for cid, pid in pids.items() if pid}
    assert shims[first.id] == shims[second.id] != shims[alone.id], shims
    shared = shims[first.id]
    # The shim is named after its first task; once that task is gone it still serves the second.
    await containerd_runtime.delete(first.id)
    assert await containerd_runtime.sweep_orphan_shims(containerd_socket) == []
    assert Path(f"/proc/{shared}").exists()
    assert (await containerd_runtime.exec(second.id, ["true"], timedelta(seconds=10))).exit_code == 0
    # With its last task the shared shim ends.
    await containerd_runtime.delete(second.id)
    await _wait_for(lambda: not Path(f"/proc/{shared}").exists(), timeout=10)
    assert await containerd_runtime.task_pid(alone.id) == pids[alone.id]


async def test_a_task_created_ahead_starts_and_one_replaced_meanwhile_still_does(
    containerd_runtime: ContainerdRuntime, make_container: MakeContainer
) -> None:
    # Created, then its task set up ahead and started: the fast path, with no lookups between.
    ahead = await make_container(start=False)
    await containerd_runtime.prepare_start(ahead.id)
    pid = await containerd_runtime.start(ahead.id)
    assert pid > 0 and await containerd_runtime.task_pid(ahead.id) == pid
    assert await containerd_runtime.start(ahead.id) == pid  # a running task is left alone
    # Its task cancelled behind the fast path's back (as a sleeping environment's may be): the
    # start finds none and makes one.
    other = await make_container(start=False)
    await containerd_runtime.prepare_start(other.id)
    await containerd_runtime.client.tasks.delete(tasks_pb2.DeleteTaskRequest(container_id=other.id))
    assert await containerd_runtime.task_pid(other.id) is None
    started = await containerd_runtime.start(other.id)
    assert started > 0 and await containerd_runtime.task_pid(other.id) == started
    # Created and started at once (no task ahead): the record and mounts known from the create.
    direct = await make_container()
    assert (await containerd_runtime.exec(direct.id, ["true"], timedelta(seconds=10))).exit_code == 0
