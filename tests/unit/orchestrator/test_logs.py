import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scheduler import domain
from scheduler.domain import LogQuery, LogStream
from scheduler.orchestrator.logs import StreamReader, log_file, read_logs
from scheduler.runtime import logger
from scheduler.storage.memory import MemoryStateStore

T0 = 1_795_795_200_000_000_000  # 2026-11-27T16:00:00Z in ns


def _env(*containers: domain.ContainerStatus) -> domain.Environment:
    return domain.Environment("e", "u", domain.EnvironmentSpec("s", ()), containers=containers)


def _writer(logs: Path, cid: str, stream: LogStream, max_bytes: int = 10**9, max_files: int = 3) -> logger.StreamWriter:
    directory = log_file(logs, "e", cid, stream).parent
    directory.mkdir(parents=True, exist_ok=True)
    return logger.StreamWriter(str(directory), stream.value, max_bytes, max_files, logger.Clock())


def _at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns % 10**9 // 1000)


async def _collect(iterator, count: int, timeout: float = 3) -> list[domain.LogLine]:
    return [await asyncio.wait_for(anext(iterator), timeout) for _ in range(count)]


async def _all(store: MemoryStateStore, logs: Path, query: LogQuery) -> list[domain.LogLine]:
    return [line async for line in read_logs(store, logs, "e", query, asyncio.Event())]


async def test_tail_since_and_stream_use_each_lines_own_time(tmp_path: Path) -> None:
    store = MemoryStateStore()
    await store.create(_env(domain.ContainerStatus("web", 0, "c1")))
    out = _writer(tmp_path, "c1", LogStream.STDOUT)
    err = _writer(tmp_path, "c1", LogStream.STDERR)
    for i in range(100):
        out.feed(b"out %d\n" % i, now_ns=T0 + i * 10**9)
    out.feed(b"partial", now_ns=T0 + 200 * 10**9)  # not a line yet: the writer holds it
    err.feed(b"err 1\n", now_ns=T0 + 50 * 10**9 + 1000)
    err.feed(b"err 2\n", now_ns=T0 + 150 * 10**9)
    lines = await _all(store, tmp_path, LogQuery(tail=2))
    # Both streams' tails, merged by the time each line was written.
    assert [(line.stream, line.line, line.at) for line in lines] == [
        (LogStream.STDERR, "err 1", _at(T0 + 50 * 10**9 + 1000)),
        (LogStream.STDOUT, "out 98", _at(T0 + 98 * 10**9)),
        (LogStream.STDOUT, "out 99", _at(T0 + 99 * 10**9)),
        (LogStream.STDERR, "err 2", _at(T0 + 150 * 10**9)),
    ]
    assert all(line.service == "web" and line.container_id == "c1" for line in lines)
    only_err = await _all(store, tmp_path, LogQuery(stream=LogStream.STDERR))
    assert [line.line for line in only_err] == ["err 1", "err 2"]
    since = await _all(store, tmp_path, LogQuery(since=_at(T0 + 97 * 10**9), stream=LogStream.STDOUT))
    assert [line.line for line in since] == ["out 97", "out 98", "out 99"]
    both = await _all(store, tmp_path, LogQuery(since=_at(T0 + 90 * 10**9), tail=1))
    assert [line.line for line in both] == ["out 99", "err 2"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await _all(store, tmp_path, LogQuery(since=future)) == []


async def test_tail_reads_back_through_rotated_files_and_joins_pieces(tmp_path: Path) -> None:
    store = MemoryStateStore()
    await store.create(_env(domain.ContainerStatus("web", 0, "c1")))
    out = _writer(tmp_path, "c1", LogStream.STDOUT, max_bytes=400, max_files=100)
    for i in range(200):
        out.feed(b"line %d\n" % i, now_ns=T0 + i)
    long_line = b"y" * (logger.MAX_RECORD * 3 + 5)
    out.feed(long_line + b"\n", now_ns=T0 + 500)
    out.feed(b"last\n", now_ns=T0 + 501)
    assert len(list(log_file(tmp_path, "e", "c1", LogStream.STDOUT).parent.iterdir())) > 20
    lines = await _all(store, tmp_path, LogQuery(tail=60, stream=LogStream.STDOUT))
    assert [line.line for line in lines] == [f"line {i}" for i in range(142, 200)] + [long_line.decode(), "last"]
    everything = await _all(store, tmp_path, LogQuery(stream=LogStream.STDOUT))
    assert [line.line for line in everything] == [f"line {i}" for i in range(200)] + [long_line.decode(), "last"]
    assert [line.at for line in everything] == sorted(line.at for line in everything)


async def test_follow_crosses_rotations_without_loss_or_repeats(tmp_path: Path) -> None:
    directory = log_file(tmp_path, "e", "c1", LogStream.STDOUT).parent
    out = _writer(tmp_path, "c1", LogStream.STDOUT, max_bytes=300, max_files=4)
    reader = StreamReader(directory, LogStream.STDOUT)
    seen: list[str] = []
    written = 0
    # Between reads the writer rotates 0, 1 or 2 times (never more than the kept files).
    for burst in [1, 3, 0, 12, 7, 15, 2, 14, 1]:
        for _ in range(burst):
            out.feed(b"n %d\n" % written)
            written += 1
        seen += [text for _, text in reader.read()]
        assert reader.read() == []
    assert seen == [f"n {i}" for i in range(written)]
    reader.close()


async def test_follow_loses_only_files_rotated_out_before_it_read_them(tmp_path: Path) -> None:
    directory = log_file(tmp_path, "e", "c1", LogStream.STDOUT).parent
    out = _writer(tmp_path, "c1", LogStream.STDOUT, max_bytes=100, max_files=2)
    reader = StreamReader(directory, LogStream.STDOUT)
    out.feed(b"a 0\n")
    assert [text for _, text in reader.read()] == ["a 0"]
    for i in range(1, 40):
        out.feed(b"a %d\n" % i)
    got = [int(text.split()[1]) for _, text in reader.read()]
    # It drains the file it holds, then resumes at the oldest file still kept; lines stay in order.
    assert got == sorted(set(got)) and got[-1] == 39 and 1 in got
    reader.close()


async def test_legacy_lines_without_timestamps_get_the_files_time(tmp_path: Path) -> None:
    store = MemoryStateStore()
    await store.create(_env(domain.ContainerStatus("web", 0, "c1")))
    path = log_file(tmp_path, "e", "c1", LogStream.STDOUT)
    path.parent.mkdir(parents=True)
    path.write_text("old 1\nold 2\n")
    os.utime(path, ns=(T0, T0))
    lines = await _all(store, tmp_path, LogQuery(tail=1))
    assert [(line.line, line.at) for line in lines] == [("old 2", _at(T0))]


async def test_follow_sees_new_lines_and_moves_to_a_replacement_container(tmp_path: Path) -> None:
    store = MemoryStateStore()
    env = _env(domain.ContainerStatus("web", 0, "c1"))
    await store.create(env)
    out = _writer(tmp_path, "c1", LogStream.STDOUT, max_bytes=200, max_files=20)
    out.feed(b"old\n")
    closing = asyncio.Event()
    follow = read_logs(store, tmp_path, "e", LogQuery(tail=1, follow=True), closing)
    assert [line.line for line in await _collect(follow, 1)] == ["old"]
    out.feed(b"half")
    out.feed(b" line\n")
    assert [line.line for line in await _collect(follow, 1)] == ["half line"]
    for i in range(30):  # several rotations while following
        out.feed(b"r %d\n" % i)
    assert [line.line for line in await _collect(follow, 30)] == [f"r {i}" for i in range(30)]
    # The container is replaced: the follow picks up the new one from its first line.
    new = _writer(tmp_path, "c2", LogStream.STDOUT)
    new.feed(b"new 1\nnew 2\n")
    stored = await store.get(_env().name)
    await store.put(_env(domain.ContainerStatus("web", 0, "c2")), expected_revision=stored.revision)
    got = await _collect(follow, 2)
    assert [(line.container_id, line.line) for line in got] == [("c2", "new 1"), ("c2", "new 2")]
    closing.set()
    assert [line async for line in follow] == []


def test_reader_racing_a_rotating_writer_gets_every_line_once(tmp_path: Path) -> None:
    import threading

    directory = log_file(tmp_path, "e", "c1", LogStream.STDOUT).parent
    out = _writer(tmp_path, "c1", LogStream.STDOUT, max_bytes=1024, max_files=1000)
    total = 3000

    def write() -> None:
        for start in range(0, total, 7):
            out.feed(b"".join(b"n %d\n" % i for i in range(start, min(start + 7, total))))

    writer = threading.Thread(target=write)
    reader = StreamReader(directory, LogStream.STDOUT)
    seen: list[str] = []
    writer.start()
    deadline = time.monotonic() + 30
    while (writer.is_alive() or len(seen) < total) and time.monotonic() < deadline:
        seen += [text for _, text in reader.read(budget=4096)]
    writer.join()
    reader.close()
    assert len(list(directory.iterdir())) > 100  # it rotated all along
    assert seen == [f"n {i}" for i in range(total)]


async def test_full_history_larger_than_a_batch_is_merged_by_time(tmp_path: Path) -> None:
    store = MemoryStateStore()
    await store.create(_env(domain.ContainerStatus("web", 0, "c1"), domain.ContainerStatus("db", 0, "c2")))
    count = 25_000  # about 1.2 MB per stream: several read batches each
    out = _writer(tmp_path, "c1", LogStream.STDOUT)
    err = _writer(tmp_path, "c2", LogStream.STDERR)
    for i in range(0, count, 500):
        out.feed(b"".join(b"web says %d\n" % j for j in range(i, i + 500)), now_ns=T0 + 2 * i)
        err.feed(b"".join(b"db says %d\n" % j for j in range(i, i + 500)), now_ns=T0 + 2 * i + 1)
    lines = await _all(store, tmp_path, LogQuery())
    assert len(lines) == 2 * count
    expected = [
        (service, f"{service} says {j}")
        for i in range(0, count, 500)
        for service in ("web", "db")
        for j in range(i, i + 500)
    ]
    assert [(line.service, line.line) for line in lines] == expected
