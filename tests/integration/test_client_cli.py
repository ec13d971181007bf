"""The ``scheduler`` client commands as a user runs them: a subprocess against a real daemon."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import VENV_BIN, DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("client"), [image_archives[TOOLBOX]]) as process:
        yield process


def cli(daemon: DaemonProcess, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "scheduler"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"SCHEDULER_ADDRESS": daemon.address, "PATH": "/usr/bin:/bin"},
    )


def test_create_get_list_logs_metrics_delete(daemon: DaemonProcess) -> None:
    command = "sh -c 'echo hello-from-cli; trap \"exit 0\" TERM; while :; do sleep 1; done'"
    created = cli(
        daemon, "env", "create", "cli-box", "--stack", "toolbox", "--param", f"command={command}",
        "--label", "owner=cli", "--set", "toolbox.resources.memory_bytes=64Mi", "--wait",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr + created.stdout
    assert "Status:      RUNNING" in created.stdout, created.stdout
    row = next(line for line in created.stdout.splitlines() if line.startswith("toolbox "))
    assert row.split()[2:4] == ["RUNNING", "NONE"], row

    got = cli(daemon, "env", "get", "cli-box", "-o", "json")
    assert got.returncode == 0, got.stderr
    env = json.loads(got.stdout)
    assert env["status"] == "ENVIRONMENT_STATUS_RUNNING" and env["spec"]["labels"] == {"owner": "cli"}
    box = next(s for s in env["services"] if s["name"] == "toolbox")
    assert box["config"]["resources"]["memoryBytes"] == str(64 * 1024**2)
    assert env["containers"][0]["pid"] > 0

    listed = cli(daemon, "env", "list", "--label", "owner=cli", "--status", "running")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0][:2] == ["NAME", "STATUS"] and [r[:3] for r in rows[1:]] == [["cli-box", "RUNNING", "toolbox"]]
    assert cli(daemon, "env", "list", "--status", "failed", "-o", "json").stdout.strip() == "{}"

    logs = cli(daemon, "env", "logs", "cli-box", "--tail", "10")
    assert logs.returncode == 0, logs.stderr
    assert "toolbox-0 | hello-from-cli" in logs.stdout.splitlines(), logs.stdout

    metrics = cli(daemon, "env", "metrics", "cli-box", "-o", "json")
    assert metrics.returncode == 0, metrics.stderr
    sample = json.loads(metrics.stdout)["containers"][0]
    assert sample["service"] == "toolbox" and int(sample["memoryLimitBytes"]) == 64 * 1024**2

    plan = cli(daemon, "env", "update", "cli-box", "--set", "toolbox.env.COLOUR=blue", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[1].split()[:2] == ["toolbox", "REPLACE"], plan.stdout
    assert json.loads(cli(daemon, "env", "get", "cli-box", "-o", "json").stdout)["generation"] == "1"

    watcher = subprocess.Popen(
        [str(VENV_BIN / "scheduler"), "events", "--env", "cli-box", "--count", "2", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"SCHEDULER_ADDRESS": daemon.address, "PATH": "/usr/bin:/bin"},
    )
    try:
        time.sleep(1)  # the subscription is in place before the delete
        deleted = cli(daemon, "env", "delete", "cli-box", "--wait")
        assert deleted.returncode == 0 and deleted.stdout.strip() == "cli-box: deleted", deleted.stderr
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2 and all(e["environment"] == "cli-box" for e in events), events
    history = cli(daemon, "env", "history", "cli-box")
    assert history.returncode == 0, history.stderr
    actions = [line.split()[4] for line in history.stdout.splitlines()[1:]]
    assert actions[0] == "create" and "delete" in actions, history.stdout

    gone = cli(daemon, "env", "get", "cli-box")
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.count("\n") == 1 and gone.stderr.startswith("error: NOT_FOUND: "), gone.stderr
    assert "cli-box" in gone.stderr and "Traceback" not in gone.stderr


def test_server_side_validation_errors_are_one_line(daemon: DaemonProcess) -> None:
    bad = cli(daemon, "env", "create", "Bad_Name", "--stack", "toolbox")
    assert bad.returncode == 1 and bad.stderr.startswith("error: INVALID_ARGUMENT: "), bad.stderr
    assert bad.stderr.count("\n") == 1 and "name" in bad.stderr
    usage = cli(daemon, "env", "create", "x", "--stack", "toolbox", "--set", "toolbox.replicas=lots")
    assert usage.returncode == 2 and "replicas" in usage.stderr and "Traceback" not in usage.stderr


def test_a_daemon_alone_lists_itself_as_the_one_node_with_what_it_allocated(daemon: DaemonProcess) -> None:
    def node() -> dict[str, object]:
        listed = cli(daemon, "node", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        nodes = json.loads(listed.stdout)["nodes"]
        assert len(nodes) == 1, nodes
        return dict(nodes[0])

    before = node()
    assert before["leader"] is True and before["networkPool"] and int(before["capacity"]["cpuMillis"]) >= 1000
    created = cli(
        daemon, "env", "create", "cli-node", "--stack", "toolbox", "--set", "toolbox.resources.memory_bytes=48Mi",
        "--set", "toolbox.resources.cpu_millis=300",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr + created.stdout
    try:
        after = node()
        delta = {k: int(after["allocated"].get(k, 0)) - int(before["allocated"].get(k, 0)) for k in after["allocated"]}
        # What is allocated is the requests: the default CPU request (250), the memory limit.
        assert delta == {"cpuMillis": 250, "memoryBytes": 48 * 1024**2, "environments": 1}, delta
        table = cli(daemon, "node", "list").stdout.splitlines()
        assert table[0].split()[:3] == ["NAME", "ADDRESS", "CPU"] and "leader" in table[1], table
        drain = cli(daemon, "node", "drain", str(after["name"]))
        assert drain.returncode == 1 and drain.stderr.startswith("error: FAILED_PRECONDITION: "), drain.stderr
        assert "cluster.etcd" in drain.stderr
        missing = cli(daemon, "node", "drain", "no-such-node")
        assert missing.stderr.startswith("error: NOT_FOUND: "), missing.stderr
    finally:
        assert cli(daemon, "env", "delete", "cli-node", "--wait").returncode == 0
