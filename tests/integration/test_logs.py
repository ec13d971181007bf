"""Container logs through the shim's log writer, against a real containerd: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.domain import LogQuery, LogStream
from scheduler.orchestrator.logs import StreamReader, read_logs
from scheduler.runtime import logger
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from scheduler.storage.memory import MemoryStateStore

pytestmark = pytest.mark.integration

LINES = 4000


def _files(directory: Path, stream: str) -> list[Path]:
    """A stream's files, oldest first."""
    files = [p for p in directory.iterdir() if p.name == f"{stream}.log" or p.name.startswith(f"{stream}.log.")]
    return sorted(files, key=lambda p: -int(p.name.rsplit(".", 1)[1]) if p.name[-1].isdigit() else 0)


def _records(directory: Path, stream: str) -> list[tuple[int, bool, bytes]]:
    out = []
    for path in _files(directory, stream):
        for raw in path.read_bytes().splitlines():
            record = logger.parse_record(raw)
            assert record is not None, f"{path.name}: {raw[:80]!r} is not a record"
            out.append(record)
    return out


async def _run(runtime: ContainerdRuntime, config: domain.ContainerConfig) -> domain.ExitStatus:
    await runtime.create(config)
    try:
        await runtime.start(config.id)
        status = await asyncio.wait_for(runtime.wait(config.id), 60)
    finally:
        # Deleting the task makes the shim close the pipes and wait for the writer to drain and exit.
        await runtime.delete(config.id)
    return status


async def test_every_line_of_both_streams_once_in_order_with_rotation(
    containerd_runtime: ContainerdRuntime, busybox_image: domain.Image, tmp_path: Path, container_id: str
) -> None:
    log_dir = tmp_path / container_id
    script = (
        f'i=0; while [ $i -lt {LINES} ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; '
        "printf 'last words without newline'"
    )
    config = domain.ContainerConfig(
        id=container_id,
        image=busybox_image,
        command=("sh", "-c", script),
        log_dir=str(log_dir),
        log_max_bytes=8192,
        log_max_files=1000,
    )
    started = time.time_ns()
    status = await _run(containerd_runtime, config)
    ended = time.time_ns()
    assert status.code == 0
    out = _records(log_dir, "stdout")
    err = _records(log_dir, "stderr")
    assert [text for _, _, text in out] == [b"out %d" % i for i in range(LINES)] + [b"last words without newline"]
    assert [text for _, _, text in err] == [b"err %d" % i for i in range(LINES)]
    assert all(complete for _, complete, _ in out + err)
    for records in (out, err):
        times = [at for at, _, _ in records]
        assert times == sorted(times), "timestamps go backwards"
        assert started <= times[0] and times[-1] <= ended
    # Rotation happened, by size, and every file kept its limit.
    stdout_files = _files(log_dir, "stdout")
    assert len(stdout_files) >= 5 and len(_files(log_dir, "stderr")) >= 5
    assert all(p.stat().st_size <= 8192 for p in stdout_files)
    # The reader of GetEnvironmentLogs gives back the same lines, with the same times.
    reader = StreamReader(log_dir, LogStream.STDOUT)
    assert reader.read_all() == [(at, text.decode()) for at, _, text in out]
    reader.close()
    store = MemoryStateStore()
    env_dir = tmp_path / "logs" / "e"
    env_dir.mkdir(parents=True)
    os.symlink(log_dir, env_dir / container_id)
    await store.create(
        domain.Environment(
            "e", "u", domain.EnvironmentSpec("s", ()), containers=(domain.ContainerStatus("web", 0, container_id),)
        )
    )
    tail = [line async for line in read_logs(store, tmp_path / "logs", "e", LogQuery(tail=3), asyncio.Event())]
    assert [line.line for line in tail if line.stream is LogStream.STDOUT] == [
        f"out {LINES - 2}",
        f"out {LINES - 1}",
        "last words without newline",
    ]
    assert [line.line for line in tail if line.stream is LogStream.STDERR] == [f"err {LINES - i}" for i in (3, 2, 1)]
    assert [line.at for line in tail] == sorted(line.at for line in tail)


async def test_follow_across_rotation_while_the_container_writes(
    containerd_runtime: ContainerdRuntime, busybox_image: domain.Image, tmp_path: Path, container_id: str
) -> None:
    logs_dir = tmp_path / "logs"
    log_dir = logs_dir / "e" / container_id
    # 40 bursts of 50 lines, 50 ms apart: the files rotate many times while the follow polls.
    script = (
        'n=0; b=0; while [ $b -lt 40 ]; do j=0; while [ $j -lt 50 ]; do echo "line $n"; n=$((n+1)); j=$((j+1)); '
        "done; b=$((b+1)); sleep 0.05; done; echo done"
    )
    config = domain.ContainerConfig(
        id=container_id,
        image=busybox_image,
        command=("sh", "-c", script),
        log_dir=str(log_dir),
        log_max_bytes=2048,
        log_max_files=200,
    )
    store = MemoryStateStore()
    await store.create(
        domain.Environment(
            "e", "u", domain.EnvironmentSpec("s", ()), containers=(domain.ContainerStatus("web", 0, container_id),)
        )
    )
    closing = asyncio.Event()
    follow = read_logs(store, logs_dir, "e", LogQuery(follow=True, stream=LogStream.STDOUT), closing)
    got: list[domain.LogLine] = []

    async def collect() -> None:
        async for line in follow:
            got.append(line)
            if line.line == "done":
                return

    collector = asyncio.create_task(collect())
    await containerd_runtime.create(config)
    try:
        await containerd_runtime.start(config.id)
        await asyncio.wait_for(asyncio.shield(collector), 60)
    finally:
        closing.set()
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await follow.aclose()
        await containerd_runtime.delete(config.id)
    assert [line.line for line in got] == [f"line {i}" for i in range(2000)] + ["done"]
    assert [line.at for line in got] == sorted(line.at for line in got)
    assert len(_files(log_dir, "stdout")) > 20


async def test_bad_rotation_settings_are_refused_naming_the_field(
    containerd_runtime: ContainerdRuntime, busybox_image: domain.Image, tmp_path: Path, container_id: str
) -> None:
    from scheduler.errors import InvalidArgument

    for field, value in (("log_max_bytes", 0), ("log_max_files", -1)):
        config = domain.ContainerConfig(id=container_id, image=busybox_image, log_dir=str(tmp_path), **{field: value})
        with pytest.raises(InvalidArgument) as caught:
            await containerd_runtime.create(config)
        assert field in str(caught.value)
