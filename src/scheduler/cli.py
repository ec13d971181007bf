"""Command line: ``scheduler run --config PATH``, ``scheduler config check PATH`` and the client commands."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from scheduler import client, errors, log
from scheduler.config import Settings, load_settings, redacted

CONFIG_ERROR_EXIT = 2


def _load(config: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, overrides)
    except errors.InvalidArgument as err:
        click.echo(f"scheduler: {err.message}", err=True)
        sys.exit(CONFIG_ERROR_EXIT)


@click.group()
@click.version_option(package_name="scheduler")
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
    from scheduler import daemon

    try:
        code = asyncio.run(daemon.run(settings))
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


client.register(main)
