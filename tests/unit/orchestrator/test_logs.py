import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scheduler import domain
from scheduler.domain import LogQuery
from scheduler.orchestrator.logs import log_file, read_logs
from scheduler.storage.memory import MemoryStateStore


def _env(*containers: domain.ContainerStatus) -> domain.Environment:
    return domain.Environment("e", "u", domain.EnvironmentSpec("s", ()), containers=containers)


def _write(logs: Path, cid: str, stream: domain.LogStream, text: str) -> None:
    path = log_file(logs, "e", cid, stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)


async def _collect(iterator, count: int, timeout: float = 3) -> list[domain.LogLine]:
    return [await asyncio.wait_for(anext(iterator), timeout) for _ in range(count)]


async def test_tail_returns_the_last_lines_tagged_by_stream(tmp_path: Path) -> None:
    store = MemoryStateStore()
    await store.create(_env(domain.ContainerStatus("web", 0, "c1")))
    _write(tmp_path, "c1", domain.LogStream.STDOUT, "".join(f"out {i}\n" for i in range(100)) + "partial")
    _write(tmp_path, "c1", domain.LogStream.STDERR, "err 1\nerr 2\n")
    lines = [line async for line in read_logs(store, tmp_path, "e", LogQuery(tail=2), asyncio.Event())]
    assert [(line.stream, line.line) for line in lines] == [
        (domain.LogStream.STDOUT, "out 98"),
        (domain.LogStream.STDOUT, "out 99"),
        (domain.LogStream.STDERR, "err 1"),
        (domain.LogStream.STDERR, "err 2"),
    ]
    assert all(line.service == "web" and line.container_id == "c1" for line in lines)
    only_err = [
        line
        async for line in read_logs(store, tmp_path, "e", LogQuery(stream=domain.LogStream.STDERR), asyncio.Event())
    ]
    assert [line.line for line in only_err] == ["err 1", "err 2"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert [line async for line in read_logs(store, tmp_path, "e", LogQuery(since=future), asyncio.Event())] == []


async def test_follow_sees_new_lines_and_moves_to_a_replacement_container(tmp_path: Path) -> None:
    store = MemoryStateStore()
    env = _env(domain.ContainerStatus("web", 0, "c1"))
    await store.create(env)
    _write(tmp_path, "c1", domain.LogStream.STDOUT, "old\n")
    closing = asyncio.Event()
    follow = read_logs(store, tmp_path, "e", LogQuery(tail=1, follow=True), closing)
    assert [line.line for line in await _collect(follow, 1)] == ["old"]
    _write(tmp_path, "c1", domain.LogStream.STDOUT, "half")
    _write(tmp_path, "c1", domain.LogStream.STDOUT, " line\n")
    assert [line.line for line in await _collect(follow, 1)] == ["half line"]
    # The container is replaced: the follow picks up the new one from its first line.
    _write(tmp_path, "c2", domain.LogStream.STDOUT, "new 1\nnew 2\n")
    await store.put(_env(domain.ContainerStatus("web", 0, "c2")))
    got = await _collect(follow, 2)
    assert [(line.container_id, line.line) for line in got] == [("c2", "new 1"), ("c2", "new 2")]
    closing.set()
    assert [line async for line in follow] == []
