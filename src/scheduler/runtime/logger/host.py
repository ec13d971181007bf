"""The program the shim starts for a task's stdio, and the host's shared writer it hands them to.

containerd's ``binary://`` stdio makes the shim start this program per task with fd 3 = the
container's stdout, fd 4 = its stderr and fd 5 = a readiness pipe (closed once it is ready, or
Tasks.Create blocks); its arguments are the URI's query as ``key value`` pairs (``dir``,
``max-bytes``, ``max-files``). The program is a zip of this package behind a few shell lines
(:func:`launcher`) that close fd 5 at once: the pipes are the program's from its start, so
nothing the container writes is lost while the interpreter starts and hands them over.

A Python process per container costs ~10 MB RSS (3.8 MB PSS), so the program does not stay:
it passes fds 3 and 4 over a unix socket (SCM_RIGHTS) to the host's one shared writer
(``serve``, started by the first task that finds none, in a session of its own), then execs a
shell that waits on that connection with SIGTERM ignored (~1 MB RSS, ~0.1 MB PSS). The shared
writer sends ``d`` and closes the connection once both pipes reached end of file and were
flushed, so the shim's SIGTERM on task delete still waits for the last lines, and the shim
signals the PID it started. When no shared writer can take the pipes in time the program writes
them itself, as before. When one runs (every task but a host's first), a compiled program
(``handover.go``, built at install) does that hand-over instead of the interpreter, whose start
cost 10-20 ms of CPU per container.

The waiting shell keeps fds 3 and 4 (the pipes' read ends) open, and a connection that ends
without ``d`` means the shared writer died (killed, out of memory): the shell then execs this
program again, which hands the same pipes to a new shared writer (starting one). What the
container wrote meanwhile waits in the pipe (it blocks only if it fills the pipe's 64 KB before
the new writer reads); only what the dead writer had read and not yet written is lost.

Nothing here depends on the daemon: the shared writer keeps writing while it is down.
The shared writer exits once its last stream has ended. It ends up under the first task's shim
(a subreaper), so whoever ends a shim's descendants must spare it (:func:`is_shared_writer`).
"""

from __future__ import annotations

import array
import os
import sys
import time

from .pump import Group, Pump, Signals
from .records import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, STREAMS, StreamWriter

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import socket
else:
    # ``signal`` and ``socket`` pull in ``enum`` and ``selectors``; the builtin modules suffice.
    import _signal as signal
    import _socket as socket

PROGRAM = "scheduler-logger"
"""File name of the installed program; the shared writer runs as ``<interpreter> -IS <path> serve``."""
HANDOVER = "scheduler-logger-handover"
"""File name of the compiled hand-over (``handover.go``), built into the interpreter's directory
at install and copied beside the program."""
STDOUT_FD, STDERR_FD, READY_FD = 3, 4, 5
DRAIN_SECONDS = 5.0
"""How long, after SIGTERM, the pipes may take to reach end of file before a writer exits."""
SOCKET_NAME = "scheduler-logger.sock"
LOCK_NAME = "scheduler-logger.lock"
HANDOVER_SECONDS = 3.0
"""How long a task's program tries to reach a shared writer before writing its pipes itself."""
FIRST_CLIENT_SECONDS = 10.0
"""A shared writer that got no stream this long after it started exits."""
WAITER = "/bin/sh"
DONE = b"d"
"""What the shared writer sends a task's waiter once that task's streams are flushed and closed."""
REJOIN = "SCHEDULER_LOGGER_REJOIN"
"""How many times the waiter ran the program again after a shared writer died (no readiness fd then)."""
MAX_REJOINS = 3
"""Hand-overs after that many deaths write the pipes in the task's own process instead: a bound, in
case a writer ends connections without ``d`` for another reason (one of an older version)."""
WAIT_SCRIPT = (
    f'read -r done; [ "$done" = {DONE.decode()} ] || {{ export {REJOIN}=$((${{{REJOIN}:-0}} + 1)); exec "$@"; }}'
)
"""The waiter: end quietly when the writer says done; otherwise hand the pipes over again."""


def run(
    directory: str,
    inputs: dict[int, str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    ready_fd: int = -1,
    drain_seconds: float = DRAIN_SECONDS,
) -> dict[str, int]:
    """Write each input fd (to its stream name) in this process until every input ends.

    Returns the bytes dropped per stream (write errors). SIGTERM or SIGINT makes it read what
    is left in the pipes for up to ``drain_seconds``, then flush and return. The caller keeps
    owning the input fds.
    """
    os.makedirs(directory, exist_ok=True)
    pump = Pump()
    writers = {os.dup(fd): StreamWriter(directory, s, max_bytes, max_files, pump.clock) for fd, s in inputs.items()}
    pump.add(Group(writers))
    with Signals(pump, drain_seconds):
        # Ready only once a SIGTERM would be handled: the shim may send one right after Tasks.Create.
        if ready_fd >= 0:
            os.close(ready_fd)
        try:
            pump.run(lambda: pump.streams == 0)
        finally:
            pump.close()
    return {writer.stream: writer.dropped for writer in writers.values()}


# --- the shared writer ---------------------------------------------------------------------


def serve(home: str, first_client_seconds: float = FIRST_CLIENT_SECONDS) -> int:
    """Be the host's shared writer in ``home`` (where the socket lives) until no stream is left."""
    import fcntl
    import resource

    os.chdir(home)  # socket paths are short (108 bytes): bind by relative name
    lock = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another shared writer runs (or is starting)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # four fds per container
    try:
        os.unlink(SOCKET_NAME)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(SOCKET_NAME)
    listener.listen(128)
    pump = Pump()
    served = [0]
    pump.watch(listener.fileno(), lambda: _accept(pump, listener, served))
    started = time.monotonic()

    def done() -> bool:
        return pump.streams == 0 and (served[0] > 0 or time.monotonic() - started > first_client_seconds)

    with Signals(pump, DRAIN_SECONDS):
        try:
            pump.run(done, timeout=1.0)
        finally:
            # Unlinked before the lock goes, so that a task arriving now starts the next writer.
            os.unlink(SOCKET_NAME)
            listener.close()
            pump.close()
    return 0


def _accept(pump: Pump, listener: socket.socket, served: list[int]) -> None:
    try:
        fd, _ = listener._accept()  # type: ignore[attr-defined]
    except OSError:
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fd)
    fds: list[int] = []
    try:
        connection.settimeout(1.0)
        uid = array.array("i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            raise PermissionError(f"peer uid {uid}")
        data, ancillary, _, _ = connection.recvmsg(8192, socket.CMSG_SPACE(2 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        if len(fds) != 2:
            raise ValueError(f"expected 2 fds, got {len(fds)}")
        directory, max_bytes, max_files = parse_args(data.decode().split("\0"))
        os.makedirs(directory, exist_ok=True)
        writers = {
            fd: StreamWriter(directory, s, max_bytes, max_files, pump.clock) for fd, s in zip(fds, STREAMS, strict=True)
        }
        connection.sendall(b"k")
    except (OSError, ValueError) as err:
        for received in fds:
            os.close(received)
        try:
            connection.sendall(b"e" + str(err).encode()[:200])
        except OSError:
            pass
        connection.close()
        return
    kept = connection.detach()
    pump.add(Group(writers, on_end=lambda: _release(kept)))
    served[0] += 1


def _release(connection: int) -> None:
    """Tell a task's waiter its streams are flushed and closed (it then exits), and close."""
    try:
        os.write(connection, DONE)
    except OSError:
        pass  # the waiter is gone (its task was killed)
    os.close(connection)


# --- the program the shim starts -----------------------------------------------------------


def hand_over(script: str, args: list[str], fds: tuple[int, int], seconds: float = HANDOVER_SECONDS) -> int | None:
    """Pass ``fds`` to the shared writer next to ``script`` (starting one if none runs).

    Returns the connection the writer closes once the streams ended, or None when no writer
    took them in time.
    """
    home = os.path.dirname(script)
    os.chdir(home)  # socket paths are short (108 bytes): connect by relative name
    payload = "\0".join(args).encode()
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    deadline = time.monotonic() + seconds
    next_start = 0.0
    while (left := deadline - time.monotonic()) > 0:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.settimeout(max(left, 0.05))
        try:
            connection.connect(SOCKET_NAME)
            connection.sendmsg([payload], rights)
            if connection.recv(256) == b"k":
                return connection.detach()
            connection.close()
            return None  # refused (bad arguments, no fds left): write them ourselves
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= next_start and not _writer_alive():
                _start_writer(script)
                next_start = time.monotonic() + 0.5
        except OSError:
            pass  # the writer was going away (reset, timeout): try again
        connection.close()
        time.sleep(0.01)
    return None


def _writer_alive() -> bool:
    import fcntl

    try:
        lock = os.open(LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(lock)


def _start_writer(script: str) -> None:
    """Start ``script serve`` in a session of its own, not a child of this soon-replaced process."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open("/dev/null", os.O_RDWR)
                for target in (0, 1, 2):
                    os.dup2(null, target)
                os.closerange(3, 1 << 16)  # never keep a container's pipe or the readiness fd open
                os.execv(sys.executable, [sys.executable, "-IS", script, "serve"])
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def is_shared_writer(args: list[str]) -> bool:
    """Whether a process's command line is the shared writer's."""
    return len(args) >= 2 and args[-1] == "serve" and os.path.basename(args[-2]) == PROGRAM


def launcher(interpreter: str, handover: str = "") -> bytes:
    """The shell lines in front of the program's zip: ready at once, then the interpreter on the zip.

    The shim creates the task only once the program is ready, and the interpreter's start, the
    imports and the hand-over took about a third of a task's creation (48-57 ms against 15 with
    the readiness closed first thing by the interpreter, 1 ms by a shell), on every deploy's
    critical path. SIGTERM stays ignored across the exec until the writing is set up (the waiter
    ignores it anyway; ``run`` installs its handler): the shim sends it only on task delete,
    once the task's processes are gone, and their pipes then end the writing by themselves.
    After a writer died the waiter runs the interpreter on the zip again, without these lines.

    ``handover``, when given, is the compiled fast path (``handover.go``): it hands the pipes to
    a running shared writer in about a millisecond of CPU, where the interpreter's start alone
    took 10-20 ms, and runs the interpreter on the zip for anything else.
    """
    import shlex  # here: the program itself never needs it

    q = shlex.quote
    fast = ""
    if handover:
        fast = (
            f"  [ ! -x {q(handover)} ] || exec {q(handover)} "
            f'"$0" {q(SOCKET_NAME)} {q(WAIT_SCRIPT)} {q(interpreter)} "$@"\n'
        )
    return (
        "#!/bin/sh\n"
        f'if [ -z "${{{REJOIN}:-}}" ]; then\n'
        f"  trap '' TERM; exec {READY_FD}>&-\n"
        f"{fast}"
        "fi\n"
        f'exec {q(interpreter)} -IS "$0" "$@"\n'
    ).encode()


def wait_on(connection: int, script: str, argv: list[str], directory: str) -> None:
    """Become a tiny process that ends when the shared writer says the task's streams are done.

    SIGTERM (the shim's, on task delete) is ignored so that the shim's wait for this process
    covers the writer's drain; an ignored signal stays ignored across exec. The pipes (fds 3
    and 4) stay open here, for a new writer if this one dies (see the module docstring).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(connection, 0)
    os.close(connection)
    os.set_blocking(0, True)  # a socket with a timeout is non-blocking underneath
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    again = [sys.executable, "-IS", script, *argv]
    if os.access(WAITER, os.X_OK):
        os.execv(WAITER, [f"{PROGRAM}-wait dir {directory}", "-c", WAIT_SCRIPT, f"{PROGRAM}-wait", *again])
    if os.read(0, 1) != DONE:
        os.environ[REJOIN] = str(int(os.environ.get(REJOIN, "0")) + 1)
        os.execv(sys.executable, again)
    while os.read(0, 4096):
        pass


def parse_args(argv: list[str]) -> tuple[str, int, int]:
    """``dir``, ``max-bytes`` and ``max-files`` from ``key value`` pairs in any order."""
    if len(argv) % 2:
        raise ValueError(f"arguments must be key value pairs, got {argv!r}")
    options = dict(zip(argv[::2], argv[1::2], strict=True))
    unknown = set(options) - {"dir", "max-bytes", "max-files"}
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)!r}")
    directory = options.get("dir", "")
    if not directory.startswith("/"):
        raise ValueError(f"dir must be an absolute path, got {directory!r}")
    max_bytes = int(options.get("max-bytes", DEFAULT_MAX_BYTES))
    max_files = int(options.get("max-files", DEFAULT_MAX_FILES))
    if max_bytes <= 0 or max_files <= 0:
        raise ValueError(f"max-bytes and max-files must be positive, got {max_bytes} and {max_files}")
    return directory, max_bytes, max_files


def main(argv: list[str], script: str) -> int:
    """Entry point: ``serve`` (the shared writer) or the shim's ``key value`` arguments."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if argv == ["serve"]:
        return serve(os.path.dirname(script))
    try:
        directory, max_bytes, max_files = parse_args(argv)
    except ValueError as err:
        print(f"scheduler-logger: {err}", file=sys.stderr)
        return 2
    # The readiness fd was closed by the launcher's lines (and is long gone after a writer died).
    rejoins = int(os.environ.get(REJOIN) or 0)
    connection = hand_over(script, argv, (STDOUT_FD, STDERR_FD)) if rejoins <= MAX_REJOINS else None
    if connection is not None:
        wait_on(connection, script, argv, directory)
        return 0
    run(directory, {STDOUT_FD: STREAMS[0], STDERR_FD: STREAMS[1]}, max_bytes, max_files)
    return 0
