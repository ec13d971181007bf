"""CloneEnvironment of a PostgreSQL environment holding about 1 GB, against a dump-and-restore copy,
in one run.

Run as root: ``python -m bench.clone [--size-mb N] [--volumes xfs-image|data-dir]``. Images are
present (preloaded). The daemon keeps its volumes on ``volumes.filesystem`` (default
``xfs-image``: a loop-mounted XFS with reflinks, where a copy shares extents; ``data-dir``: the
data dir's own filesystem, byte copies on ext4).

- **source**: a ``postgres`` environment (PostgreSQL published on a loopback port), filled with
  ``generate_series`` rows until the database is ``size-mb`` large, then vacuumed, analysed and
  CHECKPOINTed: a database at rest, as staging is between pushes (without the VACUUM, autovacuum
  rewrites the whole new table during the copy, and the clone replays that WAL at its start).
- **clone**: CloneEnvironment to RUNNING, with a new password as its only override (so the
  clone's first start also sets its own credential). Then its row count and checksum are compared
  with the source's, and the source's pause (the freeze of the copy's last pass) is read from its
  history.
- **baseline**: what a user of Docker Compose does to get the same copy: a new environment to
  RUNNING, then ``pg_dump -Fc`` of the source piped into ``pg_restore`` into it (the host's
  PostgreSQL 15 client tools, over loopback), and the same checks.

- **copies**: the source's data volume (the database at rest) copied with the volumes' own copy
  (``volumes.copy.copy_tree``), bytes versus reflinks, on the volume filesystem; and bytes on
  the data dir's filesystem (``copy_file_range``) for comparison; each followed by a ``sync``,
  timed apart (what the copy left for the disk to write).

Target (issue 17): clone of a 1 GB database ≤ 5 s to RUNNING, rows identical. Everything the run
made is deleted (the volume filesystem unmounted); leftovers are counted. The load average at
the start and end is printed: figures taken on a busy machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from google.protobuf import field_mask_pb2

from bench import leftovers
from bench.env_create import wait_deleted, wait_running
from bench.template_create import timeline
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.volumes.copy import copy_tree
from tests.support.daemon import DaemonProcess, daemon_instance, start_daemon
from tests.support.images import build

ROW_BYTES = 180
"""Approximate size on disk of one filler row (id, md5 text, 100-byte pad, tuple header)."""
CHECKSUM = "SELECT count(*) || ' ' || sum(hashtext(b::text)::bigint) FROM big b"


def _psql(port: int, password: str, sql: str, timeout: float = 1800) -> str:
    result = subprocess.run(
        ["psql", "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", "app", "-d", "app"],
        input=sql,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"psql on port {port} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _port(stub: pb_grpc.SchedulerServiceStub, name: str) -> int:
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    return next(e.host_port for e in env.endpoints if e.service == "postgres")


def _create(stub: pb_grpc.SchedulerServiceStub, name: str, password: str) -> float:
    spec = pb.EnvironmentSpecification(stack="postgres", parameters={"postgres_password": password})
    started = time.monotonic()
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=10)
    wait_running(stub, name)
    return time.monotonic() - started


def _wait_accepting(port: int, password: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False, env={**os.environ}, timeout=10
        )
        if probe.returncode == 0:
            _psql(port, password, "SELECT 1")
            return
        time.sleep(0.05)
    raise SystemExit(f"PostgreSQL on port {port} not accepting connections within {timeout}s")


def fill(port: int, password: str, size_mb: int) -> dict[str, Any]:
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    started = time.monotonic()
    _psql(
        port,
        password,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h, repeat('x', 100) AS pad "
        f"FROM generate_series(1, {rows}) g; VACUUM ANALYZE big; CHECKPOINT;",
    )
    size = int(_psql(port, password, "SELECT pg_database_size('app')"))
    return {"rows": rows, "database_bytes": size, "fill_s": round(time.monotonic() - started, 1)}


def clone_run(stub: pb_grpc.SchedulerServiceStub, password: str) -> dict[str, Any]:
    request = pb.CloneEnvironmentRequest(
        source="source",
        name="clone",
        spec=pb.EnvironmentSpecification(parameters={"postgres_password": password}),
        update_mask=field_mask_pb2.FieldMask(paths=["parameters.postgres_password"]),
    )
    started = time.monotonic()
    stub.CloneEnvironment(request, timeout=600)
    returned = time.monotonic() - started
    wait_running(stub, "clone")
    running = time.monotonic() - started
    history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="source"), timeout=10).entries
    cloned = next(h.detail for h in history if h.action == "cloned")
    paused = re.search(r"paused (\d+) ms", cloned)
    steps = timeline(stub, "clone")
    return {
        "deploy_steps": [f"{at:.3f} {step} {service}" for step, service, at in steps],
        "call_returned_s": round(returned, 3),
        "to_running_s": round(running, 3),
        "source_paused_ms": int(paused.group(1)) if paused else None,
    }


def baseline_run(stub: pb_grpc.SchedulerServiceStub, source_port: int, source_pw: str, password: str) -> float:
    started = time.monotonic()
    _create(stub, "restored", password)
    port = _port(stub, "restored")
    _wait_accepting(port, password)
    common = ["-h", "127.0.0.1", "-U", "app", "-d", "app"]
    dump = subprocess.Popen(
        ["pg_dump", "-Fc", "-p", str(source_port), *common],
        stdout=subprocess.PIPE,
        env={**os.environ, "PGPASSWORD": source_pw},
    )
    restore = subprocess.run(
        ["pg_restore", "--no-owner", "-p", str(port), *common],
        stdin=dump.stdout,
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
        timeout=3600,
        check=False,
    )
    if dump.stdout is not None:
        dump.stdout.close()
    if dump.wait(timeout=3600) != 0 or restore.returncode != 0:
        raise SystemExit(f"pg_dump | pg_restore failed: {restore.stderr.strip()[-500:]}")
    return time.monotonic() - started


def copies(volume: Path, scratch: Path, data_dir: Path) -> dict[str, Any]:
    """Copy ``volume`` three ways (see the module docstring); every copy is removed afterwards."""
    found: dict[str, Any] = {}
    ways = [("reflink", scratch, True), ("bytes", scratch, False), ("bytes_on_data_dir", data_dir, False)]
    for label, where, reflink in ways:
        target = where / f".bench-copy-{label}"
        os.sync()
        started = time.monotonic()
        stats = copy_tree(volume, target, reflink=reflink)
        copied = time.monotonic() - started
        os.sync()
        synced = time.monotonic() - started - copied
        found[label] = {
            "seconds": round(copied, 3),
            "sync_after_s": round(synced, 3),
            "bytes": stats.bytes,
            "files_cloned": stats.cloned,
            "filesystem": _fstype(where),
        }
        shutil.rmtree(target)
    return found


def _fstype(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False
    ).stdout.strip()


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the source database")
    parser.add_argument("--volumes", choices=["xfs-image", "data-dir"], default="xfs-image", help="volumes.filesystem")
    args = parser.parse_args()
    archives = build()
    passwords = {name: f"bench-{name}-{os.urandom(6).hex()}" for name in ("source", "clone", "restored")}
    load_at_start = _load()
    with tempfile.TemporaryDirectory(prefix="bench-clone-") as tmp:
        # Room for the source, its clone, a byte copy and the baseline's restore, with margin.
        image_size = (4 * args.size_mb + 4096) * 1024 * 1024
        config: dict[str, Any] = {
            "images": {"preload": [str(p) for p in archives.values()]},
            "volumes": {"filesystem": args.volumes, "image_size_bytes": image_size},
        }
        daemon: DaemonProcess = start_daemon(Path(tmp), config)
        instances = [daemon_instance(daemon)]
        try:
            with daemon.channel() as channel:
                stub = pb_grpc.SchedulerServiceStub(channel)
                _create(stub, "source", passwords["source"])
                source_port = _port(stub, "source")
                _wait_accepting(source_port, passwords["source"])
                filled = fill(source_port, passwords["source"], args.size_mb)
                expected = _psql(source_port, passwords["source"], CHECKSUM)
                # Reading every row set hint bits: flush them, so the source is at rest when cloned.
                _psql(source_port, passwords["source"], "CHECKPOINT")
                time.sleep(2)

                clone = clone_run(stub, passwords["clone"])
                clone_port = _port(stub, "clone")
                _wait_accepting(clone_port, passwords["clone"])
                clone["rows_identical"] = _psql(clone_port, passwords["clone"], CHECKSUM) == expected

                volume_root = daemon.data_dir / ("volumefs" if args.volumes == "xfs-image" else "") / "volumes"
                volume = next(p for p in (volume_root / "source").iterdir() if p.is_dir())
                copied = copies(volume, volume_root, daemon.data_dir)

                base = baseline_run(stub, source_port, passwords["source"], passwords["restored"])
                restored_same = _psql(_port(stub, "restored"), passwords["restored"], CHECKSUM) == expected
                wait_deleted(stub, ["source", "clone", "restored"])
            if os.environ.get("BENCH_CLONE_LOG"):
                print("\n".join(line for line in daemon.log().splitlines() if "clone" in line))
        finally:
            daemon.delete_all_environments()
            daemon.stop()
            daemon.cleanup()
        left = leftovers.report(instances, [tmp])
    report = {
        "volumes_filesystem": args.volumes,
        "load_average": {"start": load_at_start, "end": _load()},
        "source": filled,
        "clone": clone,
        "copy_of_the_source_volume": copied,
        "reflink_copy_vs_bytes": round(copied["reflink"]["seconds"] / max(copied["bytes"]["seconds"], 1e-6), 4),
        "baseline_create_then_dump_restore_s": {"seconds": round(base, 3), "rows_identical": restored_same},
        "ratio_to_baseline": round(clone["to_running_s"] / base, 3),
        "target": {"to_running_s": 5.0, "database_bytes": 1 << 30},
        "met": clone["to_running_s"] <= 5.0 and clone["rows_identical"],
        "leftovers": left,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
