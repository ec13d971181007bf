"""The README is what a new user tries first: its run command and grpcurl commands, verbatim."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, cleanup_daemon_dir, free_pool, free_port, wait_serving

pytestmark = pytest.mark.integration

README_ADDRESS = "127.0.0.1:50051"


def _readme_commands() -> list[str]:
    """Every shell command in the README's ```sh blocks, with continuations joined."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_readme_run_and_create_commands_serve_the_demo_page(tmp_path: Path) -> None:
    commands = _readme_commands()
    run_command = next(c for c in commands if c.startswith("make run"))
    create = next(c for c in commands if "CreateEnvironment" in c)
    get = next(c for c in commands if "GetEnvironment" in c and "Logs" not in c and "Metrics" not in c)
    delete = next(c for c in commands if "DeleteEnvironment" in c)

    port = free_port()
    address = f"127.0.0.1:{port}"
    instance, pool = "r" + secrets.token_hex(2), free_pool()
    # Only where to listen and where to keep state differ from the README: a temp dir, free ports,
    # and names of our own so that this run never meets another daemon on the host.
    env = {
        **os.environ,
        "SCHEDULER_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULER_SERVER__LISTEN": address,
        "SCHEDULER_SERVER__UNIX_SOCKET": str(tmp_path / "api.sock"),
        "SCHEDULER_NETWORK__INSTANCE": instance,
        "SCHEDULER_NETWORK__POOL": pool,
        "SCHEDULER_NETWORK__PORT_RANGE": "[30000, 30999]",
        "SCHEDULER_CONTAINERD__NAMESPACE": "readme" + secrets.token_hex(3),
        "SCHEDULER_LOG__FORMAT": "json",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            shlex.split(run_command), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_serving(address, process, log_path, timeout=300)

        def grpcurl(command: str) -> dict[str, object]:
            argv = shlex.split(command.replace(README_ADDRESS, address))
            result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (command, result.stderr)
            return json.loads(result.stdout) if result.stdout.strip() else {}

        created = grpcurl(create)
        assert created["status"] == "ENVIRONMENT_STATUS_PENDING"
        deadline = time.monotonic() + 180
        env_state = grpcurl(get)
        while env_state.get("status") != "ENVIRONMENT_STATUS_RUNNING" and time.monotonic() < deadline:
            assert env_state.get("status") != "ENVIRONMENT_STATUS_FAILED", env_state
            time.sleep(0.5)
            env_state = grpcurl(get)
        assert env_state.get("status") == "ENVIRONMENT_STATUS_RUNNING", env_state
        endpoint = next(e for e in env_state["endpoints"] if e["service"] == "frontend")  # type: ignore[union-attr]
        with urllib.request.urlopen(f"http://{endpoint['host_ip']}:{endpoint['host_port']}/", timeout=10) as reply:
            page = reply.read().decode()
        assert "hello from the backend" in page and "PostgreSQL 15" in page
        grpcurl(delete)
        # Deletion runs in the background: wait for it before stopping the daemon.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = subprocess.run(
                shlex.split(get.replace(README_ADDRESS, address)), cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0 and "NotFound" in result.stderr:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the demo environment was not deleted within 120 s")
    finally:
        # SIGTERM goes to the daemon itself, as a user's Ctrl-C would; make then exits with its status.
        for pid in _descendants(process.pid):
            if b"scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait(10)
    cleanup_daemon_dir(tmp_path / "data", instance, pool)
    assert code == 0, log_path.read_text()[-3000:]


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found
