"""FakeRuntime behaves like the real runtime at the Protocol level."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler import domain, errors
from scheduler.runtime.fake import FakeRuntime, fake_image


def config(cid: str, **labels: str) -> domain.ContainerConfig:
    return domain.ContainerConfig(id=cid, image=fake_image("test.local/a:1"), labels=labels)


async def test_life_cycle_events_and_listing() -> None:
    runtime = FakeRuntime()
    events = runtime.events()
    await runtime.create(config("a", env="e1"))
    await runtime.create(config("b", env="e2"))
    pid = await runtime.start("a")
    assert await runtime.start("a") == pid  # starting a running container is a no-op
    assert await runtime.task_pid("a") == pid and await runtime.task_pid("b") is None
    listed = await runtime.list({"env": "e1"})
    assert [(i.id, i.task_state) for i in listed] == [("a", domain.TaskState.RUNNING)]
    waiter = asyncio.ensure_future(runtime.wait("a"))
    await asyncio.sleep(0)
    assert not waiter.done()
    status = await runtime.stop("a", timedelta(seconds=1))
    assert status.code == 0 and (await waiter).code == 0
    kinds = [(await anext(events)).kind for _ in range(2)]
    assert kinds == [domain.TaskEventKind.START, domain.TaskEventKind.EXIT]
    await runtime.delete("a")
    await runtime.delete("a")
    assert [c[0] for c in runtime.calls].count("delete") == 2
    assert await runtime.resources() == {
        "containers": 1,
        "tasks": 0,
        "snapshots": 1,
        "active_snapshots": 1,
        "leases": 0,
    }


async def test_crash_oom_and_sigkill() -> None:
    runtime = FakeRuntime(ignores_sigterm=frozenset({"stubborn"}))
    await runtime.create(config("app"))
    await runtime.start("app")
    runtime.crash("app", 137, oom=True)
    status = await runtime.wait("app")
    assert status.code == 137 and status.oom_killed
    await runtime.create(config("stubborn"))
    await runtime.start("stubborn")
    assert (await runtime.stop("stubborn", timedelta(seconds=1))).code == 137
    pid = await runtime.start("app")  # restarting an exited container
    assert pid > 0 and runtime.containers["app"].starts == 2


async def test_errors_match_the_real_runtime(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    with pytest.raises(errors.NotFound):
        await runtime.start("nope")
    with pytest.raises(errors.InvalidArgument):
        await runtime.create(config("bad id"))
    await runtime.create(config("x"))
    with pytest.raises(errors.AlreadyExists):
        await runtime.create(config("x"))
    with pytest.raises(errors.NotFound):
        await runtime.exec("x", ["true"], timedelta(seconds=1))  # no running task
    runtime.fail_next("start", errors.Unavailable("containerd down"))
    with pytest.raises(errors.Unavailable):
        await runtime.start("x")
    assert await runtime.start("x") > 0
    with pytest.raises(errors.NotFound):
        await runtime.import_archive(tmp_path / "missing.tar")


async def test_images_follow_the_pull_policy() -> None:
    runtime = FakeRuntime().with_image("test.local/present:1")
    assert (await runtime.ensure_image("test.local/present:1", domain.PullPolicy.NEVER)).name == "test.local/present:1"
    with pytest.raises(errors.NotFound):
        await runtime.ensure_image("test.local/absent:1", domain.PullPolicy.NEVER)
    with pytest.raises(errors.NotFound):
        await runtime.ensure_image("test.local/absent:1", domain.PullPolicy.IF_NOT_PRESENT)
    runtime.pullable.add("test.local/absent:1")
    seen: list[domain.PullProgress] = []
    image = await runtime.ensure_image("test.local/absent:1", domain.PullPolicy.IF_NOT_PRESENT, seen.append)
    assert image.name == "test.local/absent:1" and len(seen) == 1


async def test_exec_handler_and_metrics() -> None:
    runtime = FakeRuntime(exec_handler=lambda cid, argv: domain.ExecResult(3, " ".join(argv)))
    await runtime.create(
        domain.ContainerConfig(id="m", image=fake_image("i"), resources=domain.Resources(memory_bytes=1 << 26, pids=10))
    )
    await runtime.start("m")
    assert await runtime.exec("m", ["pg_isready", "-q"], timedelta(seconds=1)) == domain.ExecResult(3, "pg_isready -q")
    samples = await runtime.metrics(["m", "other"])
    assert [(s.container_id, s.memory_limit_bytes, s.pids_limit) for s in samples] == [("m", 1 << 26, 10)]


async def test_the_event_stream_is_live_at_once_and_ends_when_closed() -> None:
    from scheduler import domain as d
    from scheduler.runtime.base import EventStream
    from scheduler.runtime.fake import FakeRuntime as Fake

    runtime = Fake().with_image("img:1")
    stream: EventStream = runtime.events()
    await stream.connected()
    runtime._emit(d.TaskEvent(d.TaskEventKind.START, "c1", 7))
    events = aiter(stream)
    assert (await anext(events)).container_id == "c1"
    await stream.aclose()
    assert [e async for e in stream] == []
