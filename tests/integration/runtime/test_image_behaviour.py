"""The demo images run as their documentation says: PostgreSQL with auth and a persistent data dir,
the backend's health reflecting the database, the frontend's page proving the whole chain, and every
container stopping promptly on its stop signal.

The containers share one network namespace, that of a toolbox container started first (the role a
pause container plays), so they talk over 127.0.0.1; ``backend`` resolves through a bind-mounted
/etc/hosts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.errors import NotFound
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.images import BACKEND, FRONTEND, POSTGRES, TOOLBOX

pytestmark = pytest.mark.integration

PASSWORD = secrets.token_hex(8)
DB_URL = f"postgresql://app:{PASSWORD}@127.0.0.1:5432/appdb"
EXEC = timedelta(seconds=20)
STOP_GRACE = timedelta(seconds=5)
STOP_BUDGET = STOP_GRACE.total_seconds() / 2
"""Seconds a container may take to stop on its stop signal: well inside the grace, so a stop that
only ended at SIGKILL fails, but not a wall-clock race (PostgreSQL's shutdown took 1.09 s once
on a loaded 2-core host, where this was 1 s)."""


@pytest.fixture(scope="module")
async def demo(containerd_runtime: ContainerdRuntime, image_archives: dict[str, Path]) -> dict[str, domain.Image]:
    images: dict[str, domain.Image] = {}
    for name in (POSTGRES, BACKEND, FRONTEND, TOOLBOX):
        (image,) = await containerd_runtime.import_archive(image_archives[name])
        images[name] = image
    return images


Run = Callable[..., Awaitable[domain.ContainerConfig]]


@pytest.fixture
async def run(containerd_runtime: ContainerdRuntime, tmp_path: Path) -> AsyncIterator[Run]:
    """Create and start a container; all are deleted at teardown."""
    created: list[str] = []

    async def start(image: domain.Image, **fields: object) -> domain.ContainerConfig:
        cid = f"img-{os.urandom(5).hex()}"
        config = domain.ContainerConfig(id=cid, image=image, log_dir=str(tmp_path / "logs" / cid), **fields)  # type: ignore[arg-type]
        await containerd_runtime.create(config)
        created.append(cid)
        await containerd_runtime.start(cid)
        return config

    yield start
    for cid in reversed(created):
        await containerd_runtime.delete(cid)


async def _http(runtime: ContainerdRuntime, via: str, port: int, path: str) -> str:
    """A raw HTTP/1.0 exchange from inside container ``via``: status line, headers and body."""
    request = shlex.quote(f"GET {path} HTTP/1.0")
    script = f"printf '%s\\r\\nHost: localhost\\r\\n\\r\\n' {request} | nc 127.0.0.1 {port}"
    result = await runtime.exec(via, ["sh", "-c", script], EXEC)
    return result.output.replace("\r\n", "\n")


def _logs(*configs: domain.ContainerConfig) -> str:
    out = []
    for config in configs:
        for name in ("stdout.log", "stderr.log"):
            path = Path(config.log_dir) / name
            if path.exists():
                out.append(f"--- {config.image.name} {name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, *logs_of: domain.ContainerConfig, timeout: float = 20.0
) -> float:
    """Poll ``check`` until true; return the seconds it took. The containers' logs explain a failure."""
    started = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - started
        except NotFound as err:
            pytest.fail(f"{what}: {err.message}\n{_logs(*logs_of)}")
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} not within {timeout}s\n{_logs(*logs_of)}")
        await asyncio.sleep(0.1)


async def _stop_quickly(runtime: ContainerdRuntime, config: domain.ContainerConfig) -> float:
    signal = config.image.config.stop_signal or "SIGTERM"
    started = time.monotonic()
    status = await runtime.stop(config.id, STOP_GRACE, signal)
    elapsed = time.monotonic() - started
    assert status.code != 137, f"{config.image.name} needed SIGKILL"
    assert elapsed < STOP_BUDGET, f"{config.image.name} took {elapsed:.2f}s to stop on {signal}"
    return elapsed


async def _sandbox(
    run: Run, demo: dict[str, domain.Image], runtime: ContainerdRuntime, hosts: Path
) -> tuple[domain.ContainerConfig, str]:
    box = await run(demo[TOOLBOX])
    pid = await runtime.task_pid(box.id)
    assert pid
    hosts.write_text("127.0.0.1 localhost backend postgres frontend\n")
    return box, f"/proc/{pid}/ns/net"


def _postgres_config(demo: dict[str, domain.Image], netns: str, data: Path) -> dict[str, object]:
    return {
        "env": {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "appdb"},
        "mounts": (domain.Mount(destination="/var/lib/postgresql/data", source=str(data)),),
        "netns_path": netns,
    }


async def test_postgres_authenticates_and_keeps_data_across_replacement(
    containerd_runtime: ContainerdRuntime, demo: dict[str, domain.Image], run: Run, tmp_path: Path
) -> None:
    rt = containerd_runtime
    box, netns = await _sandbox(run, demo, rt, tmp_path / "hosts")
    data = tmp_path / "pgdata"
    data.mkdir()
    pg = await run(demo[POSTGRES], **_postgres_config(demo, netns, data))

    async def ready() -> bool:
        result = await rt.exec(pg.id, ["pg_isready", "-h", "127.0.0.1", "-U", "app", "-d", "appdb"], EXEC)
        return result.exit_code == 0

    await _eventually(ready, "postgres accepting connections", pg)
    # As PID 1 (through exec su), postgres itself receives the stop signal.
    ps = await rt.exec(pg.id, ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u"], EXEC)
    assert ps.output.startswith("postgres"), ps.output
    sql = ["psql", DB_URL, "-X", "-q", "-tAc"]
    created = await rt.exec(pg.id, [*sql, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept'); SELECT 1"], EXEC)
    assert created.exit_code == 0 and created.output.strip() == "1", created.output
    wrong = await rt.exec(pg.id, ["psql", DB_URL.replace(PASSWORD, "wrong"), "-X", "-tAc", "SELECT 1"], EXEC)
    assert wrong.exit_code != 0 and "password authentication failed" in wrong.output
    assert (data / "PG_VERSION").read_text().strip() == "15"

    await _stop_quickly(rt, pg)
    await rt.delete(pg.id)
    replacement = await run(demo[POSTGRES], **_postgres_config(demo, netns, data))

    async def kept() -> bool:
        result = await rt.exec(replacement.id, [*sql, "SELECT v FROM t"], EXEC)
        return result.exit_code == 0 and result.output.strip() == "kept"

    await _eventually(kept, "data back after replacing the container", replacement)
    await _stop_quickly(rt, replacement)
    await _stop_quickly(rt, box)


async def test_backend_health_follows_the_database_and_frontend_proves_the_chain(
    containerd_runtime: ContainerdRuntime, demo: dict[str, domain.Image], run: Run, tmp_path: Path
) -> None:
    rt = containerd_runtime
    hosts = tmp_path / "hosts"
    box, netns = await _sandbox(run, demo, rt, hosts)
    data = tmp_path / "pgdata"
    data.mkdir()
    pg = await run(demo[POSTGRES], **_postgres_config(demo, netns, data))
    hosts_mount = domain.Mount(destination="/etc/hosts", source=str(hosts), options=("rbind", "ro"))
    backend = await run(demo[BACKEND], env={"DATABASE_URL": DB_URL}, netns_path=netns, mounts=(hosts_mount,))

    async def healthy() -> bool:
        return (await _http(rt, box.id, 8080, "/health")).startswith("HTTP/1.1 200")

    await _eventually(healthy, "backend /health 200", pg, backend)
    assert (await _http(rt, box.id, 8080, "/health")).endswith("\n\nok\n")
    added = await _http(rt, box.id, 8080, "/items/add?value=hello%20world")
    assert added.startswith("HTTP/1.1 201") and '"value" : "hello world"' in added, added
    listed = await _http(rt, box.id, 8080, "/items")
    assert listed.startswith("HTTP/1.1 200") and "hello world" in listed
    assert (await _http(rt, box.id, 8080, "/nope")).startswith("HTTP/1.1 404")

    frontend = await run(demo[FRONTEND], netns_path=netns, mounts=(hosts_mount,))

    async def serving() -> bool:
        return (await _http(rt, box.id, 80, "/healthz")).startswith("HTTP/1.1 200")

    await _eventually(serving, "frontend /healthz 200", backend, frontend)
    page = await _http(rt, box.id, 80, "/")
    # One GET on the frontend: nginx SSI includes the backend's greeting, read from PostgreSQL.
    assert page.startswith("HTTP/1.1 200") and "hello from the backend" in page, page
    assert "PostgreSQL 15" in page and '"items" : 1' in page
    proxied = await _http(rt, box.id, 80, "/api/items")
    assert proxied.startswith("HTTP/1.1 200") and "hello world" in proxied

    # Database down: the backend says so with a 503 and the reason, and so does the frontend.
    await _stop_quickly(rt, pg)
    down = await _http(rt, box.id, 8080, "/health")
    assert down.startswith("HTTP/1.1 503") and "database unavailable" in down, down
    assert (await _http(rt, box.id, 80, "/healthz")).startswith("HTTP/1.1 503")

    await _stop_quickly(rt, frontend)
    await _stop_quickly(rt, backend)
    await _stop_quickly(rt, box)


async def test_toolbox_runs_commands_and_stops_on_sigterm(
    containerd_runtime: ContainerdRuntime, demo: dict[str, domain.Image], run: Run
) -> None:
    box = await run(demo[TOOLBOX])
    result = await containerd_runtime.exec(box.id, ["sh", "-c", "wget --help 2>&1 | head -1; id -u"], EXEC)
    assert "BusyBox" in result.output and result.output.strip().endswith("0")
    await _stop_quickly(containerd_runtime, box)
