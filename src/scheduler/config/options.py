"""Option types of the settings: paths (made absolute), programs, secrets (redacted), and sections."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
)


@dataclass(frozen=True)
class _PathOption:
    """Marks an option as a filesystem path; ``command`` paths may also be a bare name on PATH."""

    command: bool = False

    def resolve(self, value: str, base: Path) -> str:
        """``value`` made absolute against ``base``; empty stays empty (it means "not set")."""
        if not value:
            return value
        scheme = "unix://" if value.startswith("unix://") else "unix:" if value.startswith("unix:") else ""
        path = value[len(scheme) :]
        if self.command and "/" not in path:
            return value
        return os.path.normpath(base / Path(path).expanduser())


class _SecretOption:
    """Marks an option whose value never leaves the daemon (``config check`` prints ``<redacted>``)."""


_PATH = _PathOption()
_COMMAND = _PathOption(command=True)
_SECRET = _SecretOption()
REDACTED = "<redacted>"


def _from_cwd(option: _PathOption) -> Callable[[Any], Any]:
    def absolute(value: Any) -> Any:
        resolved = option.resolve(str(value), Path.cwd())
        return type(value)(resolved) if isinstance(value, Path) else resolved

    return absolute


ConfigPath = Annotated[str, _PATH, AfterValidator(_from_cwd(_PATH))]
"""A path option; empty means unset. Relative values are resolved (see the module docstring)."""
CommandPath = Annotated[str, _COMMAND, AfterValidator(_from_cwd(_COMMAND))]
"""A program: a bare name is looked up on PATH, anything with a slash is a path."""
DirPath = Annotated[Path, _PATH, AfterValidator(_from_cwd(_PATH))]
SecretStr = Annotated[str, _SECRET]
"""A credential: usable as a plain string, redacted when settings are printed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 0 to 65535")
    return value


def _resolve_paths(model: type[BaseModel], data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``data`` (raw options of ``model``) with every path option made absolute against ``base``."""
    out = dict(data)
    for name, info in model.model_fields.items():
        if name in out:
            out[name] = _resolve_value(info.annotation, info.metadata, out[name], base)
    return out


def _resolve_value(annotation: Any, metadata: list[Any], value: Any, base: Path) -> Any:
    option = next((m for m in metadata if isinstance(m, _PathOption)), None)
    if option is not None and isinstance(value, str | Path):
        return option.resolve(str(value), base)
    if get_origin(annotation) is Annotated:
        inner, *extra = get_args(annotation)
        return _resolve_value(inner, [*metadata, *extra], value, base)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, Mapping):
        return _resolve_paths(annotation, value, base)
    args = get_args(annotation)
    if get_origin(annotation) is list and isinstance(value, list):
        return [_resolve_value(args[0], [], item, base) for item in value]
    if get_origin(annotation) is dict and isinstance(value, Mapping):
        return {key: _resolve_value(args[1], [], item, base) for key, item in value.items()}
    return value


def redacted(settings: BaseModel) -> dict[str, Any]:
    """The settings as plain data, every secret option that is set replaced by ``<redacted>``."""
    out: dict[str, Any] = {}
    for name, info in type(settings).model_fields.items():
        out[name] = _redact_value(info.annotation, info.metadata, getattr(settings, name))
    return out


def _redact_value(annotation: Any, metadata: list[Any], value: Any) -> Any:
    if any(isinstance(m, _SecretOption) for m in metadata):
        return REDACTED if value else value
    if get_origin(annotation) is Annotated:
        inner, *extra = get_args(annotation)
        return _redact_value(inner, [*metadata, *extra], value)
    if isinstance(value, BaseModel):
        return redacted(value)
    args = get_args(annotation)
    if isinstance(value, dict):
        return {key: _redact_value(args[1] if args else Any, [], item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(args[0] if args else Any, [], item) for item in value]
    return str(value) if isinstance(value, Path) else value
