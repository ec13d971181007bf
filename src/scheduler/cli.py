"""Command line: ``scheduler run --config PATH``, ``scheduler config check PATH`` and the client commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from scheduler import openssl, pydantic_plugins

# Before pydantic builds the first model (see scheduler.pydantic_plugins).
pydantic_plugins.disable()
# OpenSSL is not loaded at start (see scheduler.openssl): asyncio and pydantic (through hashlib)
# import what would load it here, and the daemon's modules in ``run``.
with openssl.deferred():
    import asyncio

    import click
    from pydantic import ValidationError

    from scheduler import client, errors, log
    from scheduler.config import Settings, load_settings, redacted

CONFIG_ERROR_EXIT = 2


def _load(config: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, overrides)
    except errors.InvalidArgument as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(CONFIG_ERROR_EXIT)


class _Commands(click.Group):
    """The top-level group; the client's commands join it when any command but ``run`` is asked for.

    The daemon's start never loads them (about 30 modules).
    """

    _client_added = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "run":
            self._add_client()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_client()
        return super().list_commands(ctx)

    def _add_client(self) -> None:
        if not self._client_added:
            self._client_added = True
            client.register(self)


def _profiled(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon; with ``SCHEDULER_PROFILE=PATH`` under cProfile, its stats written to PATH at exit.

    For finding what the event loop spends its time on under load (``bench.burst --profile``);
    threads' work (file writes, hashing) is not in it.
    """
    target = os.environ.get("SCHEDULER_PROFILE")
    if not target:
        return asyncio.run(main)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(asyncio.run, main)
    finally:
        profiler.dump_stats(target)


def _watch_children_by_pidfd() -> None:
    """Have the event loop poll a pidfd per child instead of a thread per child waiting for it.

    Python 3.11 waits for every child (CNI plugins, iptables-restore, mounts) in a thread of its
    own, started and joined on the event loop: 5.4 s of it for 200 deploys at once on 2 busy
    cores (3.12 polls pidfds by default).
    """
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


@click.group(cls=_Commands)
@click.version_option(package_name="scheduler")
@client.global_connection_options
def main() -> None:
    """Deploy precomposed application stacks on this host through containerd."""


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="YAML configuration file.")
@click.option("--listen", help="TCP address HOST:PORT to serve on (overrides server.listen).")
@click.option("--unix-socket", help="Unix socket to serve on (overrides server.unix_socket).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Overrides data_dir.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), help="Overrides log.format.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Overrides log.level.")
def run(
    config: Path | None,
    listen: str | None,
    unix_socket: str | None,
    data_dir: Path | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    # Sources are deep-merged, so a nested override keeps the file's other keys of that section.
    overrides: dict[str, Any] = {}
    server = {k: v for k, v in {"listen": listen, "unix_socket": unix_socket}.items() if v is not None}
    logging = {k: v for k, v in {"format": log_format, "level": log_level}.items() if v is not None}
    if server:
        overrides["server"] = server
    if logging:
        overrides["log"] = logging
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = _load(config, overrides)
    log.configure(settings.log.format, settings.log.level)
    from scheduler import launch, startup

    try:
        # containerd starts while the daemon's modules load (about half a second).
        begun = launch.begin(settings)
        with openssl.deferred():
            from scheduler import daemon

        _watch_children_by_pidfd()
        code = _profiled(daemon.run(settings, lambda: load_settings(config, overrides), begun))
    except startup.AddressInUse as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(CONFIG_ERROR_EXIT)
    except startup.DataDirInUse as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(1)
    except errors.SchedulerError as err:
        log.get("cli").error("daemon.failed", error=err.message)
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(1)
    sys.exit(code)


@main.group()
def config() -> None:
    """Inspect configuration files."""


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def config_check(path: Path) -> None:
    """Validate a configuration file and print the effective settings: paths resolved, secrets redacted.

    ``SCHEDULER_*`` variables apply, as they would to ``scheduler run --config PATH``.
    """
    import json

    settings = _load(path, {})
    click.echo(f"{path}: valid")
    click.echo(json.dumps(redacted(settings), indent=2))


@main.group()
def token() -> None:
    """Bearer tokens for the API."""


@token.command("create")
@click.argument("name")
def token_create(name: str) -> None:
    """Make a token for NAME; print it once, with the lines the daemon's config needs."""
    from scheduler.api.auth import new_token
    from scheduler.config import TokenSettings

    try:
        TokenSettings(name=name, sha256="0" * 64)
    except ValidationError:
        click.echo(f"scheduler: {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-'", err=True)
        sys.exit(CONFIG_ERROR_EXIT)
    secret, digest = new_token()
    click.echo(f"token: {secret}")
    click.echo("(shown once: the daemon keeps only its SHA-256)", err=True)
    click.echo(
        "\n# add to the daemon's configuration, then restart it:\n"
        "auth:\n"
        "  tokens:\n"
        f"    - name: {name}\n"
        f"      sha256: {digest}\n"
        "  bindings:\n"
        "    - role: operator   # or viewer, admin; optional name_prefix / labels scope\n"
        f'      principals: ["token:{name}"]'
    )


@main.group()
def admin() -> None:
    """Host-side administration: run on the daemon's host, with access to its data directory."""


_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="The daemon's configuration file."
)


@admin.command("backup-state")
@_CONFIG_OPTION
@click.argument("output", type=click.Path(path_type=Path))
def admin_backup_state(config_path: Path | None, output: Path) -> None:
    """Copy the state database to OUTPUT, consistently, while the daemon serves (SQLite's online backup)."""
    from scheduler.storage.backup import backup_database

    settings = _load(config_path, {})
    try:
        size = backup_database(settings.state_db_path, output)
    except errors.SchedulerError as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(1)
    click.echo(f"backed up {settings.state_db_path} to {output} ({size} bytes)")


@admin.command("restore-state")
@_CONFIG_OPTION
@click.option("--replace", is_flag=True, help="Overwrite an existing state database (stop the daemon first).")
@click.argument("backup", type=click.Path(path_type=Path))
def admin_restore_state(config_path: Path | None, replace: bool, backup: Path) -> None:
    """Put a backup taken by backup-state in place as the state database; the next start adopts what runs."""
    from scheduler.storage.backup import restore_database

    settings = _load(config_path, {})
    try:
        restore_database(backup, settings.state_db_path, replace=replace)
    except errors.SchedulerError as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(1)
    click.echo(f"restored {backup} to {settings.state_db_path}")


@admin.command("release-volumes")
@_CONFIG_OPTION
def admin_release_volumes(config_path: Path | None) -> None:
    """Unmount the volume filesystem image (volumes.filesystem: xfs-image) that the daemon leaves mounted.

    Run it once the daemon is stopped and no environment runs (a host shutdown, an uninstall);
    the next start mounts it again. Refused while a daemon serves the data dir.
    """
    from scheduler import startup
    from scheduler.volumes.filesystem import release

    settings = _load(config_path, {})
    lock = startup.DataDirLock(settings.data_dir)
    try:
        lock.acquire()
        try:
            released = release(settings.data_dir)
        finally:
            lock.release()
    except errors.SchedulerError as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(1)
    click.echo("unmounted the volume filesystem" if released else "no volume filesystem is mounted")
