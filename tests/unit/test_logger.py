"""The shim's log writer: record format, rotation without loss, partial lines, readiness and SIGTERM."""

import array
import contextlib
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler.runtime import logger
from scheduler.runtime.containerd.tasks import install_logger


def _records(directory: Path, stream: str) -> list[tuple[int, bool, bytes]]:
    """Every record of a stream, oldest file first."""
    names = sorted(
        (p.name for p in directory.iterdir() if p.name.startswith(f"{stream}.log")),
        key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0,
    )
    out = []
    for name in names:
        for raw in (directory / name).read_bytes().splitlines():
            record = logger.parse_record(raw)
            assert record is not None, raw
            out.append(record)
    return out


def _run_in_thread(directory: Path, **kwargs: int) -> tuple[int, int, threading.Thread, dict[str, dict[str, int]]]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    result: dict[str, dict[str, int]] = {}

    def target() -> None:
        try:
            result["dropped"] = logger.run(str(directory), {out_r: "stdout", err_r: "stderr"}, **kwargs)
        finally:
            os.close(out_r)
            os.close(err_r)

    thread = threading.Thread(target=target)
    thread.start()
    return out_w, err_w, thread, result


def test_timestamps_are_rfc3339_nanoseconds_and_parse_back() -> None:
    clock = logger.Clock()
    ns = 1_795_795_200_123_456_789  # 2026-11-27T16:00:00.123456789Z
    stamp = clock.stamp(ns)
    assert stamp == b"2026-11-27T16:00:00.123456789Z"
    assert logger.parse_record(stamp + b" stdout F hello world") == (ns, True, b"hello world")
    assert logger.parse_record(stamp + b" stderr P ") == (ns, False, b"")
    # Fewer fraction digits and none at all, as other RFC 3339 writers produce.
    assert logger.parse_record(b"2026-11-27T16:00:00.5Z stdout F x") == (1_795_795_200_500_000_000, True, b"x")
    assert logger.parse_record(b"1999-03-01T00:00:01Z stdout F x")[0] == int(
        datetime(1999, 3, 1, 0, 0, 1, tzinfo=UTC).timestamp() * 1e9
    )
    for raw in (b"plain text from an old file", b"2026-11-27T16:00:00Z stdout X x", b"", b"20xx-11-27T16:00:00Z s F x"):
        assert logger.parse_record(raw) is None


def test_every_line_once_in_order_across_rotations(tmp_path: Path) -> None:
    out_w, err_w, thread, result = _run_in_thread(tmp_path, max_bytes=2000, max_files=1000)
    for i in range(3000):
        os.write(out_w, b"out %d\n" % i)
        if i % 3 == 0:
            os.write(err_w, b"err %d\n" % i)
    os.close(out_w)
    os.close(err_w)
    thread.join(10)
    assert not thread.is_alive()
    assert result["dropped"] == {"stdout": 0, "stderr": 0}
    out = _records(tmp_path, "stdout")
    assert [text for _, _, text in out] == [b"out %d" % i for i in range(3000)]
    assert all(complete for _, complete, _ in out)
    times = [at for at, _, _ in out]
    assert times == sorted(times)
    assert [text for _, _, text in _records(tmp_path, "stderr")] == [b"err %d" % i for i in range(0, 3000, 3)]
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("stdout.log"))
    assert len(files) > 20
    # Every file stays within the limit: rotation happens between records.
    assert all(p.stat().st_size <= 2000 for p in files)


def test_only_max_files_are_kept_and_they_hold_the_newest_lines(tmp_path: Path) -> None:
    out_w, err_w, thread, _ = _run_in_thread(tmp_path, max_bytes=500, max_files=3)
    for i in range(500):
        os.write(out_w, b"line %d\n" % i)
    os.close(out_w)
    os.close(err_w)
    thread.join(10)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stdout"))
    assert names == ["stdout.log", "stdout.log.1", "stdout.log.2"]
    texts = [text for _, _, text in _records(tmp_path, "stdout")]
    assert texts[-1] == b"line 499"
    first = int(texts[0].split()[1])
    assert texts == [b"line %d" % i for i in range(first, 500)]  # a contiguous suffix: nothing lost inside


def test_partial_line_is_flushed_when_the_stream_ends_and_long_lines_split(tmp_path: Path) -> None:
    out_w, err_w, thread, _ = _run_in_thread(tmp_path)
    long_line = b"x" * (logger.MAX_RECORD * 2 + 10)
    os.write(out_w, b"first\nsec")
    time.sleep(0.05)
    os.write(out_w, b"ond\n" + long_line + b"\n")
    os.write(err_w, b"no newline at the end")
    os.close(out_w)
    os.close(err_w)
    thread.join(10)
    out = _records(tmp_path, "stdout")
    assert [(complete, len(text)) for _, complete, text in out[2:]] == [
        (False, logger.MAX_RECORD),
        (False, logger.MAX_RECORD),
        (True, 10),
    ]
    assert [text for _, _, text in out[:2]] == [b"first", b"second"]
    assert b"".join(text for _, _, text in out[2:]) == long_line
    assert _records(tmp_path, "stderr") == [(_records(tmp_path, "stderr")[0][0], True, b"no newline at the end")]


def test_appends_to_existing_files_and_counts_their_size(tmp_path: Path) -> None:
    for round_ in range(2):
        out_w, err_w, thread, _ = _run_in_thread(tmp_path, max_bytes=300, max_files=50)
        for i in range(20):
            os.write(out_w, b"round %d line %d\n" % (round_, i))
        os.close(out_w)
        os.close(err_w)
        thread.join(10)
    texts = [text for _, _, text in _records(tmp_path, "stdout")]
    assert texts == [b"round %d line %d" % (r, i) for r in range(2) for i in range(20)]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())


def test_arguments_come_in_pairs_in_any_order() -> None:
    assert logger.parse_args(["max-files", "5", "dir", "/x", "max-bytes", "10"]) == ("/x", 10, 5)
    assert logger.parse_args(["dir", "/x"]) == ("/x", logger.DEFAULT_MAX_BYTES, logger.DEFAULT_MAX_FILES)
    for bad in (["dir"], ["dir", "relative"], ["dir", "/x", "max-bytes", "0"], ["dir", "/x", "colour", "red"]):
        with pytest.raises(ValueError):
            logger.parse_args(bad)


def _spawn(launcher: str, directory: Path) -> tuple[int, int, int, int]:
    """Start the installed writer as the shim does: fds 3, 4, 5 and no environment but two variables."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()
    # Pipes are close-on-exec; dup2 onto 3, 4 and 5 in the child clears that for those three only.
    pid = os.posix_spawn(
        launcher,
        [launcher, "max-bytes", "1000000", "dir", str(directory)],
        {"CONTAINER_ID": "c", "CONTAINER_NAMESPACE": "n"},
        file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate((out_r, err_r, ready_w), 3)],
    )
    for fd in (out_r, err_r, ready_w):
        os.close(fd)
    return pid, out_w, err_w, ready_r


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"writer {pid} did not exit within {timeout}s")


def test_installed_writer_signals_readiness_and_drains_on_sigterm(tmp_path: Path) -> None:
    launcher = str(tmp_path / "bin" / "scheduler-logger")
    install_logger(launcher)
    first = os.stat(launcher)
    install_logger(launcher)  # unchanged content: not rewritten
    assert os.stat(launcher).st_ino == first.st_ino and os.access(launcher, os.X_OK)
    head = Path(launcher).read_bytes()[:1000]
    assert head.startswith(b"#!/bin/sh\n") and f"exec {sys.executable} -IS ".encode() in head
    directory = tmp_path / "logs"
    pid, out_w, err_w, ready_r = _spawn(launcher, directory)
    try:
        assert os.read(ready_r, 1) == b""  # the program closed its end: ready
        # Handed over to the shared writer (not written by itself after the hand-over's deadline):
        # it becomes the waiting shell.
        assert _becomes_waiter(pid)
        assert (directory / "stdout.log").exists() and (directory / "stderr.log").exists()
        os.write(out_w, b"before term\nunterminated")
        os.write(err_w, b"to stderr\n")
        # As the shim does on task delete: close the pipes, then SIGTERM.
        os.close(out_w)
        os.close(err_w)
        os.kill(pid, signal.SIGTERM)
        assert _wait(pid, 10) == 0
    finally:
        os.close(ready_r)
    assert [text for _, _, text in _records(directory, "stdout")] == [b"before term", b"unterminated"]
    assert [text for _, _, text in _records(directory, "stderr")] == [b"to stderr"]


def test_sigterm_with_a_writer_still_attached_exits_after_the_drain_time(tmp_path: Path) -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    result: dict[str, object] = {}

    def target() -> None:
        result["dropped"] = logger.run(str(tmp_path), {out_r: "stdout", err_r: "stderr"}, drain_seconds=0.3)

    # Signals go to the main thread, so the writer runs there and the test writes from a thread.
    def feed() -> None:
        os.write(out_w, b"kept\npartial")
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    feeder = threading.Thread(target=feed)
    started = time.monotonic()
    feeder.start()
    try:
        target()
    finally:
        feeder.join()
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
    assert 0.4 < time.monotonic() - started < 3
    assert [text for _, _, text in _records(tmp_path, "stdout")] == [b"kept", b"partial"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_task_stdio_names_the_writer_with_the_containers_directory_and_rotation(tmp_path: Path) -> None:
    from urllib.parse import parse_qs, unquote, urlsplit

    from scheduler.runtime.containerd import labels as L
    from scheduler.runtime.containerd.stdio import prepare_logs

    launcher = str(tmp_path / "state dir" / "bin" / "scheduler-logger")
    log_dir = str(tmp_path / "logs" / "env one" / "c&1")
    stdout, stderr = prepare_logs(launcher, {L.LOG_DIR: log_dir, L.LOG_MAX_BYTES: "4096", L.LOG_MAX_FILES: "7"})
    assert stdout == stderr
    uri = urlsplit(stdout)
    assert uri.scheme == "binary" and unquote(uri.path) == launcher and os.access(launcher, os.X_OK)
    assert parse_qs(uri.query) == {"dir": [log_dir], "max-bytes": ["4096"], "max-files": ["7"]}
    assert os.path.isdir(log_dir)
    # Containers created before rotation labels existed get the defaults; no log dir means no output.
    defaults = parse_qs(urlsplit(prepare_logs(launcher, {L.LOG_DIR: log_dir})[0]).query)
    assert defaults["max-bytes"] == [str(logger.DEFAULT_MAX_BYTES)]
    assert defaults["max-files"] == [str(logger.DEFAULT_MAX_FILES)]
    assert prepare_logs(launcher, {}) == ("", "")


def _becomes_waiter(pid: int) -> bool:
    """Whether the task's log process became the waiting shell within 10 s, not an interpreter."""

    def waiting() -> bool:
        name = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        return name.startswith(f"{logger.PROGRAM}-wait dir ".encode()) and not exe.startswith("python")

    deadline = time.monotonic() + 10
    while not waiting() and time.monotonic() < deadline:
        time.sleep(0.01)
    return waiting()


def _writers_in(home: Path) -> list[int]:
    """PIDs of shared writers started from ``home`` (their command line names the launcher)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(home).encode() in b" ".join(args) and b"serve" in args:
                found.append(int(entry.name))
    return found


def _end(home: Path, tasks: list[tuple[int, int, int, int]]) -> None:
    """Close the tasks' pipe ends, kill the tasks' log processes and any shared writer left in ``home``."""
    for pid, *fds in tasks:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    for pid in _writers_in(home):
        os.kill(pid, signal.SIGKILL)


def test_tasks_hand_their_pipes_to_one_shared_writer_and_wait_in_a_small_process(tmp_path: Path) -> None:
    launcher = str(tmp_path / "bin" / "scheduler-logger")
    install_logger(launcher)
    tasks = [_spawn(launcher, tmp_path / f"logs{i}") for i in range(3)]
    try:
        for i, (_, out_w, err_w, ready_r) in enumerate(tasks):
            assert os.read(ready_r, 1) == b""
            os.write(out_w, b"task %d\npartial" % i)
            os.write(err_w, b"err %d\n" % i)
        # What stays per task, once its pipes are handed over, is the waiting process: a shell,
        # not an interpreter.
        for pid, *_ in tasks:
            assert _becomes_waiter(pid)
        # Tasks arriving while the first writer starts may start more; all but one exit at once.
        deadline = time.monotonic() + 10
        while len(writers := _writers_in(tmp_path / "bin")) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(writers) == 1, writers
        # The shim's order on task delete: close the pipes, SIGTERM, wait. The waiter outlives the
        # SIGTERM until the writer has flushed that task's files.
        for pid, out_w, err_w, _ in tasks:
            os.close(out_w)
            os.close(err_w)
            os.kill(pid, signal.SIGTERM)
        for pid, *_ in tasks:
            assert _wait(pid, 10) == 0
        for i in range(3):
            assert [t for _, _, t in _records(tmp_path / f"logs{i}", "stdout")] == [b"task %d" % i, b"partial"]
            assert [t for _, _, t in _records(tmp_path / f"logs{i}", "stderr")] == [b"err %d" % i]
        # With its last stream gone the shared writer exits and leaves no socket behind.
        deadline = time.monotonic() + 10
        while _writers_in(tmp_path / "bin") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _writers_in(tmp_path / "bin")
        assert not (tmp_path / "bin" / "scheduler-logger.sock").exists()
    finally:
        _end(tmp_path / "bin", tasks)


def test_a_task_whose_pipes_no_writer_takes_writes_them_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.runtime.logger import host

    monkeypatch.setattr(host, "_start_writer", lambda script: None)  # no shared writer comes up
    monkeypatch.chdir(tmp_path)  # the hand-over connects from the launcher's directory
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    assert host.hand_over(str(tmp_path / "scheduler-logger"), ["dir", str(tmp_path)], (out_r, err_r), 0.2) is None
    for fd in (out_r, out_w, err_r, err_w):
        os.close(fd)


def test_a_bad_client_gets_an_error_and_the_shared_writer_goes_on(tmp_path: Path) -> None:
    import socket

    launcher = str(tmp_path / "bin" / "scheduler-logger")
    install_logger(launcher)
    pid, out_w, err_w, ready_r = _spawn(launcher, tmp_path / "logs")
    try:
        assert os.read(ready_r, 1) == b""
        assert _becomes_waiter(pid)  # ready comes first; the shared writer runs once the pipes are handed over
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as bad:
            bad.settimeout(10)
            bad.connect(str(tmp_path / "bin" / "scheduler-logger.sock"))
            bad.send(b"dir\0/nowhere")  # no fds, odd arguments
            assert bad.recv(256).startswith(b"e")
        os.write(out_w, b"still written\n")
        os.close(out_w)
        os.close(err_w)
        os.kill(pid, signal.SIGTERM)
        assert _wait(pid, 10) == 0
        assert [t for _, _, t in _records(tmp_path / "logs", "stdout")] == [b"still written"]
    finally:
        os.close(ready_r)
        for writer in _writers_in(tmp_path / "bin"):
            os.kill(writer, signal.SIGKILL)


def test_a_killed_shared_writer_is_replaced_and_what_the_task_writes_meanwhile_arrives(tmp_path: Path) -> None:
    launcher = str(tmp_path / "bin" / "scheduler-logger")
    install_logger(launcher)
    directory = tmp_path / "logs"
    pid, out_w, err_w, ready_r = _spawn(launcher, directory)
    try:
        assert os.read(ready_r, 1) == b""
        assert _becomes_waiter(pid)
        os.write(out_w, b"before\n")
        deadline = time.monotonic() + 10
        while not (directory / "stdout.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        (writer,) = _writers_in(tmp_path / "bin")
        os.kill(writer, signal.SIGKILL)
        # Four times a pipe's capacity: without a new reader the writes would block (or, had the
        # pipe no reader left, fail with EPIPE); each write is bounded by the deadline.
        lines = [b"after %04d " % i + b"x" * 1000 + b"\n" for i in range(256)]
        os.set_blocking(out_w, False)
        deadline = time.monotonic() + 30
        for line in lines:
            while True:
                try:
                    os.write(out_w, line)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, "writes blocked: no writer took the pipe over"
                    time.sleep(0.01)
        os.write(err_w, b"to stderr\n")
        writers = _writers_in(tmp_path / "bin")
        assert writers and writer not in writers
        # The task ends as the shim ends it; its waiter waits for the new writer's flush.
        os.close(out_w)
        os.close(err_w)
        os.kill(pid, signal.SIGTERM)
        assert _wait(pid, 20) == 0
        assert [t for _, _, t in _records(directory, "stdout")] == [b"before", *(line[:-1] for line in lines)]
        assert [t for _, _, t in _records(directory, "stderr")] == [b"to stderr"]
        deadline = time.monotonic() + 10
        while _writers_in(tmp_path / "bin") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _writers_in(tmp_path / "bin")
    finally:
        _end(tmp_path / "bin", [(pid, out_w, err_w, ready_r)])


def test_a_writer_that_ends_every_connection_without_done_gets_a_bounded_number_of_hand_overs(
    tmp_path: Path,
) -> None:
    import array
    import fcntl
    import socket

    from scheduler.runtime.logger import host

    launcher = str(tmp_path / "bin" / "scheduler-logger")
    install_logger(launcher)
    # A "writer" that holds the lock, takes the pipes and hangs up without saying done (as one of
    # an older version did when a task ended): the waiter must not hand them over forever.
    lock = os.open(tmp_path / "bin" / host.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(tmp_path / "bin" / host.SOCKET_NAME))
    listener.listen(8)
    listener.settimeout(20)
    directory = tmp_path / "logs"
    pid, out_w, err_w, ready_r = _spawn(launcher, directory)
    accepted = 0
    try:
        os.write(out_w, b"kept\n")
        with contextlib.suppress(TimeoutError):
            while accepted <= host.MAX_REJOINS + 1:
                connection, _ = listener.accept()
                _, ancillary, _, _ = connection.recvmsg(8192, socket.CMSG_SPACE(2 * 4))
                for *_, payload in ancillary:
                    for fd in array.array("i", payload[: len(payload) - len(payload) % 4]):
                        os.close(fd)
                connection.sendall(b"k")
                connection.close()
                accepted += 1
                listener.settimeout(3)
        assert accepted == host.MAX_REJOINS + 1
        # Then the task writes its pipes itself, as when no writer takes them.
        deadline = time.monotonic() + 10
        while not (directory / "stdout.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [t for _, _, t in _records(directory, "stdout")] == [b"kept"]
    finally:
        listener.close()
        os.close(lock)
        _end(tmp_path / "bin", [(pid, out_w, err_w, ready_r)])


def test_a_task_program_is_ready_before_its_pipes_are_handed_over(tmp_path: Path) -> None:
    # The shim creates the task only once the program is ready: it must not wait for the hand-over.
    import socket

    launcher = str(tmp_path / "bin" / "scheduler-logger")
    install_logger(launcher)
    directory = tmp_path / "logs"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as writer:  # a shared writer that is slow to answer
        writer.bind(str(tmp_path / "bin" / "scheduler-logger.sock"))
        writer.listen(1)
        writer.settimeout(10)
        pid, out_w, err_w, ready_r = _spawn(launcher, directory)
        try:
            connection, _ = writer.accept()
            with connection:
                connection.settimeout(10)
                _, ancillary, _, _ = connection.recvmsg(8192, socket.CMSG_SPACE(2 * 4))
                for fd in (fd for _, _, data in ancillary for fd in array.array("i", data)):
                    os.close(fd)
                # The program waits for this answer: it said it was ready before.
                os.set_blocking(ready_r, False)
                assert os.read(ready_r, 1) == b""
                connection.sendall(b"erefused")  # it then writes its pipes itself
            os.write(out_w, b"written by the task's own program\n")
            os.close(out_w)
            os.close(err_w)
            assert _wait(pid, 10) == 0
        finally:
            os.close(ready_r)
    assert [t for _, _, t in _records(directory, "stdout")] == [b"written by the task's own program"]


def test_with_a_shared_writer_running_the_compiled_hand_over_needs_no_interpreter(tmp_path: Path) -> None:
    import subprocess

    launcher = tmp_path / "bin" / "scheduler-logger"
    install_logger(str(launcher))
    # ``make install`` builds it: a missing build is a failure here, not a Python fallback.
    handover = tmp_path / "bin" / logger.HANDOVER
    assert os.access(handover, os.X_OK), "the compiled hand-over was not installed beside the program"
    assert f"exec {handover} ".encode() in launcher.read_bytes()[:600]
    writer = subprocess.Popen([sys.executable, "-IS", str(launcher), "serve"])
    # A program whose interpreter does not exist: only the compiled path can hand its pipes over.
    no_python = tmp_path / "bin" / "no-python-logger"
    no_python.write_bytes(logger.launcher("/nonexistent/python3", str(handover)))
    no_python.chmod(0o755)
    tasks: list[tuple[int, int, int, int]] = []
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "bin" / "scheduler-logger.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        directory = tmp_path / "logs"
        tasks.append(_spawn(str(no_python), directory))
        pid, out_w, err_w, ready_r = tasks[0]
        assert os.read(ready_r, 1) == b""
        os.close(ready_r)
        assert _becomes_waiter(pid)
        os.write(out_w, b"through the compiled hand-over\n")
        os.write(err_w, b"and its stderr\n")
        os.close(out_w)
        os.close(err_w)
        os.kill(pid, signal.SIGTERM)  # ignored by the waiter until the writer says done
        assert _wait(pid, 10) == 0
        assert [t for _, _, t in _records(directory, "stdout")] == [b"through the compiled hand-over"]
        assert [t for _, _, t in _records(directory, "stderr")] == [b"and its stderr"]
        assert writer.wait(10) == 0  # its last stream ended
    finally:
        _end(tmp_path / "bin", tasks)
        with contextlib.suppress(ProcessLookupError):
            writer.kill()
        writer.wait(10)
