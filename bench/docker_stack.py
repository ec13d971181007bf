"""web-postgres under a private dockerd, as docker compose would run it: the docker side of bench.density.

Per environment: a bridge network, a named volume, and the three images the daemon runs
(postgres, backend, frontend) with the same environment variables, the frontend's port published
on the host, and the same probes as docker health checks (TCP connect to 5432, HTTP GET of
/health and /healthz, run by dockerd through exec, the only kind docker has). Each service starts
once the one it depends on answers its probe (compose's ``depends_on: service_healthy``); the
benchmark probes from the host itself, because docker 20.10 has no start interval and its first
check would only run after a whole interval. The checks' interval defaults to 60 s rather than
the daemon's 5 s: an exec per container every 5 s costs a runc exec each (~60 ms of CPU), more
than the two cores have with a hundred environments, while the memory measured does not depend
on it. A few environments are brought up at a time.
"""

from __future__ import annotations

import secrets
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.dockerd import PrivateDockerd
from bench.serving import memory_mb
from tests.support.daemon import free_port
from tests.support.images import BACKEND, FRONTEND, POSTGRES

IMAGES = (POSTGRES, BACKEND, FRONTEND)


def load_images(docker: PrivateDockerd, archives: dict[str, Path]) -> None:
    """``docker load`` the three images from the project's archives."""
    for name in IMAGES:
        docker.run("load", "-i", str(archives[name]), timeout=300)


def up(docker: PrivateDockerd, index: int, interval: int, timeout: float = 300) -> int:
    """Bring one web-postgres up (page served through PostgreSQL); its published host port."""
    network = docker.create_network(index)
    prefix = f"e{index}"
    password = secrets.token_urlsafe(24)
    database_url = f"postgres://app:{password}@postgres:5432/app"

    def start(service: str, image: str, probe: str, *options: str) -> str:
        docker.run(
            "run", "-d", "--name", f"{prefix}-{service}", "--network", network, "--network-alias", service,
            "--health-cmd", probe, "--health-interval", f"{interval}s", "--health-timeout", "5s",
            "--health-retries", "3", "--health-start-period", "60s", *options, image,
        )  # fmt: skip
        return docker.run(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", f"{prefix}-{service}"
        )

    deadline = time.monotonic() + timeout
    postgres_ip = start(
        "postgres", POSTGRES, "nc -z 127.0.0.1 5432",
        "-e", "POSTGRES_USER=app", "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=app",
        "-v", f"{prefix}-pgdata:/var/lib/postgresql/data", "--memory", "1g", "--pids-limit", "1024",
    )  # fmt: skip
    _wait(lambda: _connects(postgres_ip, 5432), deadline, f"{prefix} postgres")
    backend_ip = start(
        "backend", BACKEND, "wget -q -O /dev/null http://127.0.0.1:8080/health",
        "-e", f"DATABASE_URL={database_url}", "-e", "PGHOST=postgres", "-e", "PGPORT=5432", "-e", "PGUSER=app",
        "-e", f"PGPASSWORD={password}", "-e", "PGDATABASE=app", "-e", "PORT=8080",
        "--memory", "512m", "--pids-limit", "512",
    )  # fmt: skip
    _wait(lambda: _get(f"http://{backend_ip}:8080/health").strip() == "ok", deadline, f"{prefix} backend")
    port = free_port()
    start(
        "frontend", FRONTEND, "wget -q -O /dev/null http://127.0.0.1:80/healthz",
        "-e", "BACKEND_URL=http://backend:8080", "-p", f"{port}:80", "--memory", "256m", "--pids-limit", "256",
    )  # fmt: skip
    _wait(lambda: "PostgreSQL" in _get(f"http://127.0.0.1:{port}/"), deadline, f"{prefix} page")
    return port


def up_many(docker: PrivateDockerd, count: int, interval: int, at_once: int) -> None:
    """``count`` environments, ``at_once`` being brought up at a time."""
    with ThreadPoolExecutor(at_once) as pool:
        for result in pool.map(lambda i: up(docker, i, interval), range(count)):
            del result


def overhead(docker: PrivateDockerd) -> dict[str, tuple[int, float]]:
    """Per kind of host process docker needs for the containers: how many, and their PSS in MB summed."""

    def pss(pids: list[int]) -> tuple[int, float]:
        return len(pids), sum(memory_mb(pid)[1] for pid in pids)

    return {
        "shims": pss(docker.shims()),
        "docker-proxy": pss(docker.proxies()),
        "dockerd": pss([docker.pid()]),
        "containerd": pss([docker.containerd_pid()]),
    }


def _wait(ready: Callable[[], bool], deadline: float, what: str) -> None:
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise SystemExit(f"docker baseline: {what} not ready in time")


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode(errors="replace"))
    except OSError:
        return ""
