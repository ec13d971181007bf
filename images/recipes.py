"""What goes into each image: a shared busybox base layer plus one layer of the image's own files.

The names and tags are a contract with the stacks and tests: ``docker.io/library/postgres:15`` (the
host's PostgreSQL major version), ``docker.io/schedulerdemo/{backend,frontend,toolbox}:1.0``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from images.oci import ImageConfig
from images.rootfs import Rootfs

FILES = Path(__file__).parent / "files"

PG_MAJOR = "15"
PG_BIN = f"/usr/lib/postgresql/{PG_MAJOR}/bin"
PG_LIB = f"/usr/lib/postgresql/{PG_MAJOR}/lib"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDER = "/usr/local/bin/signal-forwarder"


@dataclass(frozen=True)
class Recipe:
    """One image: its full name, the file name of its archive and how to fill its own layer."""

    name: str
    file: str
    config: ImageConfig
    fill: Callable[[Rootfs], None]


def _text(rel: str) -> str:
    return (FILES / rel).read_text()


def base_layer() -> Rootfs:
    """Static busybox with applet links, merged-/usr symlinks, users and a signal forwarder."""
    fs = Rootfs()
    for top in ("bin", "lib", "lib64", "sbin"):
        host = "/" + top
        if os.path.islink(host):
            fs.symlink(top, os.readlink(host))
            fs.dir(os.path.join("/", os.readlink(host)))
    for path in ("/usr/local/bin", "/usr/local/sbin", "/etc", "/root", "/var/run", "/run", "/var/tmp"):
        fs.dir(path, 0o700 if path == "/root" else 0o755)
    fs.dir("/tmp", 0o1777)
    fs.dir("/var/tmp", 0o1777)
    fs.host_path(
        "/usr/bin/busybox" if os.path.exists("/usr/bin/busybox") else "/bin/busybox",
        dest="/usr/bin/busybox",
        mode=0o755,
    )
    for applet in _busybox_applets():
        if applet != "busybox":
            fs.symlink(f"/usr/bin/{applet}", "busybox")
    fs.file("/etc/passwd", _text("base/passwd"))
    fs.file("/etc/group", _text("base/group"))
    fs.file("/etc/nsswitch.conf", _text("base/nsswitch.conf"))
    fs.file("/etc/hosts", _text("base/hosts"))
    fs.file(FORWARDER, _text("base/signal-forwarder"), mode=0o755)
    return fs


def _busybox_applets() -> list[str]:
    # The applet list is fixed per busybox build; the build cache re-checks busybox's mtime.
    import subprocess

    out = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True).stdout
    return sorted(name for name in out.split() if name and "/" not in name)


def _postgres(fs: Rootfs) -> None:
    fs.binaries_with_libs(
        [f"{PG_BIN}/{name}" for name in ("postgres", "initdb", "pg_ctl", "psql", "pg_isready", "pg_dump")]
        + [lib for lib in sorted(glob.glob(f"{PG_LIB}/*.so")) if not os.path.basename(lib).startswith("llvmjit")]
    )
    fs.host_tree(f"/usr/share/postgresql/{PG_MAJOR}", skip=lambda p: p.endswith("/man"))
    fs.host_tree("/usr/share/zoneinfo")
    if os.path.isdir("/usr/lib/locale/C.utf8"):
        fs.host_tree("/usr/lib/locale/C.utf8")
    fs.dir("/var/lib/postgresql", uid=999, gid=999)
    fs.dir("/var/lib/postgresql/data", 0o700, uid=999, gid=999)
    fs.dir("/docker-entrypoint-initdb.d")
    fs.file("/usr/local/bin/docker-entrypoint.sh", _text("postgres/docker-entrypoint.sh"), mode=0o755)


def _backend(fs: Rootfs) -> None:
    fs.binaries_with_libs([f"{PG_BIN}/psql"])
    fs.symlink("/usr/local/bin/psql", f"{PG_BIN}/psql")
    fs.file("/app/start", _text("backend/start"), mode=0o755)
    fs.file("/app/serve", _text("backend/serve"), mode=0o755)
    fs.file("/app/lib.sh", _text("backend/lib.sh"))
    for script in ("health.cgi", "index.cgi", "items.cgi"):
        fs.file(f"/app/cgi-bin/{script}", _text(f"backend/cgi-bin/{script}"), mode=0o755)


def _frontend(fs: Rootfs) -> None:
    fs.binaries_with_libs(["/usr/sbin/nginx"])
    fs.host_path("/etc/nginx/mime.types")
    for path in ("/var/lib/nginx", "/var/log/nginx", "/usr/share/nginx/html"):
        fs.dir(path)
    fs.file("/etc/nginx/nginx.conf.template", _text("frontend/nginx.conf.template"))
    fs.file("/usr/share/nginx/html/index.html", _text("frontend/index.html"))
    fs.file("/app/start", _text("frontend/start"), mode=0o755)


def _toolbox(fs: Rootfs) -> None:
    fs.dir("/work")


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name=f"docker.io/library/postgres:{PG_MAJOR}",
        file=f"postgres-{PG_MAJOR}.tar",
        config=ImageConfig(
            env=(
                f"PATH={BASE_PATH}:{PG_BIN}",
                f"PG_MAJOR={PG_MAJOR}",
                "PGDATA=/var/lib/postgresql/data",
                "LANG=C.UTF-8",
            ),
            entrypoint=("/usr/local/bin/docker-entrypoint.sh",),
            cmd=("postgres",),
            stop_signal="SIGINT",
            exposed_ports=("5432/tcp",),
            volumes=("/var/lib/postgresql/data",),
        ),
        fill=_postgres,
    ),
    Recipe(
        name="docker.io/schedulerdemo/backend:1.0",
        file="backend-1.0.tar",
        config=ImageConfig(
            env=(f"PATH={BASE_PATH}", "PORT=8080", "PGCONNECT_TIMEOUT=3"),
            entrypoint=(FORWARDER, "/app/start"),
            working_dir="/app",
            exposed_ports=("8080/tcp",),
        ),
        fill=_backend,
    ),
    Recipe(
        name="docker.io/schedulerdemo/frontend:1.0",
        file="frontend-1.0.tar",
        config=ImageConfig(
            env=(f"PATH={BASE_PATH}", "PORT=80", "BACKEND_URL=http://backend:8080"),
            entrypoint=("/app/start",),
            exposed_ports=("80/tcp",),
        ),
        fill=_frontend,
    ),
    Recipe(
        name="docker.io/schedulerdemo/toolbox:1.0",
        file="toolbox-1.0.tar",
        config=ImageConfig(
            env=(f"PATH={BASE_PATH}",),
            entrypoint=(FORWARDER, "sh"),
            cmd=("-c", "exec sleep 2147483647"),
        ),
        fill=_toolbox,
    ),
)
