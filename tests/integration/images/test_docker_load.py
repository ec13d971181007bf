"""The image archives load into Docker too (Debian's docker.io, a private daemon): the builder
writes a docker-archive manifest.json over the same blobs as the OCI layout."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import BACKEND, FRONTEND, POSTGRES, TOOLBOX
from tests.support.registry import require_tool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docker() -> Iterator[list[str]]:
    """A private dockerd (own data and exec roots and socket; no iptables, no bridge); its CLI argv."""
    dockerd = require_tool("dockerd")
    client = require_tool("docker")
    root = Path(tempfile.mkdtemp(prefix="sched-docker-", dir="/tmp"))
    socket = root / "docker.sock"
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                dockerd,
                "--data-root", str(root / "data"),
                "--exec-root", str(root / "exec"),
                "--pidfile", str(root / "docker.pid"),
                "-H", f"unix://{socket}",
                "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    argv = [client, "-H", f"unix://{socket}"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*argv, "version"], capture_output=True).returncode != 0:
            assert process.poll() is None, (root / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd did not serve within 30 s"
            time.sleep(0.2)
        yield argv
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_every_archive_loads_into_docker_with_its_config(docker: list[str], image_archives: dict[str, Path]) -> None:
    for name in (POSTGRES, BACKEND, FRONTEND, TOOLBOX):
        loaded = subprocess.run([*docker, "load", "-i", str(image_archives[name])], capture_output=True, text=True)
        assert loaded.returncode == 0, loaded.stderr
        short = name.removeprefix("docker.io/").removeprefix("library/")
        assert short in loaded.stdout, loaded.stdout
    inspected = subprocess.run([*docker, "image", "inspect", "postgres:15"], capture_output=True, text=True)
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["StopSignal"] == "SIGINT"
    assert "PGDATA=/var/lib/postgresql/data" in config["Env"]
    assert "5432/tcp" in config["ExposedPorts"]


def test_a_loaded_image_runs_under_docker(docker: list[str], image_archives: dict[str, Path]) -> None:
    subprocess.run([*docker, "load", "-i", str(image_archives[TOOLBOX])], capture_output=True, check=True)
    ran = subprocess.run(
        [*docker, "run", "--rm", "--network", "none", "schedulerdemo/toolbox:1.0", "-c", "echo hello from docker"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hello from docker"
