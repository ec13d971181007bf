"""The README is what a new user tries first: every ```sh command in it runs here, as written.

How, and why so:
- The commands run in a fresh copy of the checkout's tracked files (``git ls-files``: what a
  clone gives, local edits included) in a temp dir, so ``make run`` builds, installs and keeps its
  ``.data`` there, exactly as in a new user's clone, and relative paths are exercised for real.
- They run inside a network namespace of the test's own (``ip netns add``, loopback up, each
  command entered into it with ``nsenter --net`` alone, so mounts and cgroups are the host's):
  ``127.0.0.1:50051``, the demo's port range, its bridges and iptables rules are this test's
  alone, and no setting is changed to keep it away from other daemons.
  The environment is the test's own, minus inherited ``SCHEDULER_*`` and make variables;
  nothing is added.
- The namespace has no route out, so pip cannot reach the package index from it: ``make install``
  (the step of ``make run`` that needs the network: system packages, which are present, and the
  virtualenv) runs in the copy first, outside the namespace. Everything else, ``make run``'s image
  build included, runs inside, verbatim.
- The comment conventions the commands follow (background servers, streams, expected output,
  placeholders such as ``<host_port>``) are documented at the end of README.md and read by
  tests/support/readme.py: a command added to the README runs without a change here.
- Cleanup, whatever failed: Ctrl-C to the server's process group, then the copy's containers,
  networks and managed containerd are swept (inside the namespace), processes naming the copy
  (shims, log writers) are ended by PID, mounts under it unmounted, the namespace deleted (its
  bridges and chains go with it) and the copy removed. That nothing was left running by the
  README's own commands is asserted before the sweep.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.daemon import ROOT
from tests.support.leftovers import track
from tests.support.processes import end, mounts_under, processes_naming, unmount_under
from tests.support.readme import Command, commands, fill

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

COMMAND_TIMEOUT = 420
SERVE_TIMEOUT = 600
REPEAT_TIMEOUT = 300
STREAM_WINDOW = 5
STOP_TIMEOUT = 90


@dataclass
class Sandbox:
    """The copy and the namespace the README runs in."""

    copy: Path
    netns: str
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)
    servers: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def argv(self, text: str) -> list[str]:
        return [*self.enter, "bash", "-c", text]

    @property
    def enter(self) -> list[str]:
        """The prefix that runs a program inside the namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"]

    def run(self, text: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(text), cwd=self.copy, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    copy = Path(tempfile.mkdtemp(prefix="readme-", dir="/tmp"))
    netns = "readme-" + secrets.token_hex(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "MAKE", "MFLAGS"))}
    box = Sandbox(copy, netns, env)
    track(copy)
    try:
        _copy_checkout(copy)
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
        setup = subprocess.run(["make", "install"], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        assert setup.returncode == 0, f"make install in the copy failed:\n{setup.stdout}\n{setup.stderr}"
        yield box
    finally:
        _teardown(box)


def _teardown(box: Sandbox) -> None:
    for process, log_path in box.servers:
        _interrupt(process)
        # Shown by pytest when the test failed: the server's side of the story.
        print(f"--- {process.args[-1]} (exit {process.returncode}), last lines:\n{log_path.read_text()[-6000:]}")
    data_dir = box.copy / ".data"
    if data_dir.exists():
        sweep = (
            "import sys; from scheduler.config import load_settings; "
            "from tests.support.daemon import cleanup_daemon_dir; "
            "s = load_settings(__import__('pathlib').Path(sys.argv[1])); "
            "cleanup_daemon_dir(s.data_dir, s.network.instance, s.network.pool)"
        )
        subprocess.run(
            [
                *box.enter,
                sys.executable,
                "-c",
                sweep,
                str(box.copy / "config.example.yaml"),
            ],
            cwd=ROOT,
            env={**box.env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            timeout=300,
        )
    end(processes_naming(str(box.copy)))
    unmount_under(box.copy)
    subprocess.run(["ip", "netns", "del", box.netns], capture_output=True, timeout=30)
    shutil.rmtree(box.copy, ignore_errors=True)


def _interrupt(process: subprocess.Popen[bytes]) -> int | None:
    """Ctrl-C, as a terminal sends it: SIGINT to the command's whole process group; SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode


def _serve(box: Sandbox, command: Command) -> None:
    log_path = box.copy / f".readme-server-{len(box.servers)}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            box.argv(command.text),
            cwd=box.copy,
            env=box.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    box.servers.append((process, log_path))


def _run_after_server(box: Sandbox, text: str) -> subprocess.CompletedProcess[str]:
    """The command that follows a server, retried until it succeeds while the server is starting."""
    process, log_path = box.servers[-1]
    deadline = time.monotonic() + SERVE_TIMEOUT
    while True:
        result = box.run(text)
        if result.returncode == 0:
            return result
        if process.poll() is not None:
            raise AssertionError(
                f"{process.args[-1]!r} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} still failing {SERVE_TIMEOUT}s after the server started: {result.stderr}")
        time.sleep(1)


def _stream(box: Sandbox, text: str) -> str:
    """Run a streaming command until its first line (or a few seconds), then Ctrl-C it."""
    process = subprocess.Popen(
        box.argv(text),
        cwd=box.copy,
        env=box.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    ready, _, _ = select.select([process.stdout], [], [], STREAM_WINDOW)
    first = process.stdout.readline().decode() if ready else ""
    alive = process.poll() is None
    code = _interrupt(process)
    rest, errors = process.stdout.read().decode(), process.stderr.read().decode()
    assert alive or code == 0, f"{text!r} ended by itself with {code}: {errors}"
    assert code in (0, 130) or code == -signal.SIGINT, f"{text!r} exited {code} on Ctrl-C: {errors}"
    assert "Traceback" not in errors, errors
    return first + rest


def test_every_readme_command_runs_as_written(sandbox: Sandbox) -> None:
    box = sandbox
    listed = commands(ROOT / "README.md")
    ran: list[str] = []
    follows_server = False
    for command in listed:
        if command.skipped:
            continue
        text = fill(command, box.outputs)
        if command.serves:
            _serve(box, command)
            follows_server = True
            ran.append(text)
            continue
        if command.streams:
            output = _stream(box, text)
        elif follows_server:
            output = _run_after_server(box, text).stdout
        else:
            output = _repeat(box, command, text) if command.repeats else _checked(box, text)
        follows_server = False
        if command.expected is not None:
            assert command.expected in output, f"{text!r} does not show {command.expected!r}:\n{output}"
        box.outputs.append(output)
        ran.append(text)

    assert box.servers, "the README starts no server (a command marked 'serves until Ctrl-C')"
    assert len(ran) >= len(listed) - 1, (ran, listed)
    # The README's own commands deleted what they created; Ctrl-C then stops the daemon cleanly.
    for process, log_path in box.servers:
        _interrupt(process)
        log = log_path.read_text()
        assert "daemon.stopped" in log, log[-4000:]
    leftovers = processes_naming(str(box.copy))
    assert not leftovers, f"still running after the README's commands and Ctrl-C: {leftovers}"
    assert not mounts_under(box.copy), mounts_under(box.copy)


def _checked(box: Sandbox, text: str) -> str:
    result = box.run(text)
    assert result.returncode == 0, f"{text!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _repeat(box: Sandbox, command: Command, text: str) -> str:
    deadline = time.monotonic() + REPEAT_TIMEOUT
    while True:
        output = _checked(box, text)
        if command.expected is not None and command.expected in output:
            return output
        assert "FAILED" not in output, f"{text!r} shows FAILED:\n{output}"
        assert time.monotonic() < deadline, f"{text!r} did not show {command.expected!r} in {REPEAT_TIMEOUT}s"
        time.sleep(0.5)
