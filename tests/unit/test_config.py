"""Settings: relative paths resolved once (file-relative or cwd-relative), secrets redacted."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from scheduler.config import REDACTED, Settings, load_settings, redacted
from scheduler.config.options import _PathOption

ALL_RELATIVE = {
    "data_dir": "data",
    "state_db": "db/state.db",
    "server": {
        "unix_socket": "run/api.sock",
        "tls": {"cert_file": "tls/server.pem", "key_file": "tls/server.key", "client_ca_file": "tls/ca.pem"},
    },
    "containerd": {"socket": "unix:run/containerd.sock", "binary": "bin/containerd"},
    "images": {"preload": ["images/a.tar", "b.tar"]},
    "network": {"cni_bin_dir": "cni"},
    "cluster": {
        "etcd": {"tls": {"ca_file": "etcd/ca.pem", "cert_file": "etcd/c.pem", "key_file": "etcd/c.key"}},
        "backup_dir": "shared/backups",
    },
}


def _path_values(model: Any) -> list[tuple[str, str]]:
    """(dotted name, value) of every path option of a loaded settings model, lists expanded."""
    found: list[tuple[str, str]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        markers = [*info.metadata, *getattr(info.annotation, "__metadata__", ())]
        args = getattr(info.annotation, "__args__", ())
        markers += [m for a in args for m in getattr(a, "__metadata__", ())]
        if any(isinstance(m, _PathOption) for m in markers):
            for item in value if isinstance(value, list) else [value]:
                found.append((name, str(item)))
        elif isinstance(value, BaseModel):
            found += [(f"{name}.{n}", v) for n, v in _path_values(value)]
    return found


def _write(path: Path, options: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(options))
    return path


def test_every_path_option_is_found_by_the_walker() -> None:
    names = {name for name, _ in _path_values(Settings())}
    expected = {"data_dir", "state_db", "server.unix_socket", "containerd.socket", "containerd.binary"}
    assert expected | {"network.cni_bin_dir"} <= names


def test_relative_paths_in_a_file_resolve_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "etc" / "scheduler.yaml", ALL_RELATIVE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(config)
    values = dict(_path_values(settings))
    for name, value in _path_values(settings):
        assert Path(value).is_absolute(), (name, value)
    base = tmp_path / "etc"
    assert settings.data_dir == base / "data"
    assert settings.state_db_path == base / "db" / "state.db"
    assert values["containerd.socket"] == str(base / "run" / "containerd.sock")
    assert values["containerd.binary"] == str(base / "bin" / "containerd")
    assert settings.images.preload == [str(base / "images" / "a.tar"), str(base / "b.tar")]
    assert settings.network.cni_bin_dir == str(base / "cni")


@pytest.mark.parametrize("cwd", ["etc", "elsewhere", "/"])
def test_data_dir_in_a_file_lands_next_to_the_file_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: str
) -> None:
    config = _write(tmp_path / "etc" / "scheduler.yaml", {"data_dir": "data"})
    workdir = tmp_path / cwd
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    settings = load_settings(Path("../etc/scheduler.yaml") if cwd == "elsewhere" else config)
    assert settings.data_dir == tmp_path / "etc" / "data"
    assert settings.state_db_path == tmp_path / "etc" / "data" / "state.db"


def test_variables_and_flags_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "etc" / "scheduler.yaml", ALL_RELATIVE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCHEDULER_STATE_DB", "from-env.db")
    monkeypatch.setenv("SCHEDULER_IMAGES__PRELOAD", '["env.tar"]')
    settings = load_settings(config, {"data_dir": Path("from-flag"), "server": {"unix_socket": "flag.sock"}})
    assert settings.data_dir == tmp_path / "from-flag"
    assert settings.state_db == str(tmp_path / "from-env.db")
    assert settings.images.preload == [str(tmp_path / "env.tar")]
    assert settings.server.unix_socket == str(tmp_path / "flag.sock")
    # Options the variables and flags left alone still come from the file, relative to it.
    assert settings.network.cni_bin_dir == str(tmp_path / "etc" / "cni")
    for name, value in _path_values(settings):
        assert Path(value).is_absolute(), (name, value)


def test_unset_paths_stay_unset_and_bare_commands_stay_on_path(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.yaml", {"data_dir": "/srv/x", "containerd": {"binary": "containerd"}})
    settings = load_settings(config)
    assert settings.state_db == "" and settings.containerd.socket == ""
    assert settings.server.unix_socket == "/run/scheduler/scheduler.sock"  # absolute by default
    assert settings.containerd.binary == "containerd"
    assert settings.data_dir == Path("/srv/x")


def test_the_example_config_loads_with_every_path_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    monkeypatch.chdir(tmp_path)
    settings = load_settings(example)
    assert settings.data_dir == example.parent / ".data"
    for name, value in _path_values(settings):
        assert not value or Path(value).is_absolute() or name == "containerd.binary", (name, value)


def test_redacted_hides_secrets_and_only_secrets(tmp_path: Path) -> None:
    options = {"images": {"registries": {"r.example:5000": {"username": "deploy", "password": "hunter2"}}}}
    dumped = redacted(load_settings(_write(tmp_path / "c.yaml", options)))
    host = dumped["images"]["registries"]["r.example:5000"]
    assert host == {"mirrors": [], "insecure": False, "username": "deploy", "password": REDACTED}
    assert "hunter2" not in repr(dumped)
    assert dumped["data_dir"] == "/var/lib/scheduler"


def _model_options(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of every option of ``model``; options of keyed sections as ``section.*.name``."""
    found: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= _model_options(annotation, f"{prefix}{name}.")
        elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            found.add(f"{prefix}{name}")
            found |= _model_options(args[-1], f"{prefix}{name}.*.")
        else:
            found.add(f"{prefix}{name}")
    return found


def _documented_options(text: str) -> set[str]:
    """Dotted names of the example's options, entries of keyed sections and lists as ``section.*.name``.

    A keyed section or list (``registries: {}``, ``tokens: []``) shows its entries as a
    commented-out sample (``#`` in the section's column, then the YAML) right below it.
    """

    def walk(data: Any, prefix: str) -> set[str]:
        found: set[str] = set()
        for key, value in data.items():
            if isinstance(value, dict) and value:
                found |= walk(value, f"{prefix}{key}.")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                found |= {f"{prefix}{key}"} | {f"{prefix}{key}.*.{k}" for v in value for k in v}
            else:
                found.add(f"{prefix}{key}")
        return found

    def entries(sample: Any) -> list[dict[str, Any]]:
        items = sample if isinstance(sample, list) else list(sample.values()) if isinstance(sample, dict) else []
        return [item for item in items if isinstance(item, dict)]

    found = walk(yaml.safe_load(text), "")
    path: list[tuple[int, str]] = []  # (indent, key) of the YAML lines enclosing the current one
    samples: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            owner = next((i for i, (col, _) in enumerate(path) if col == indent), None)
            body = stripped[1:]
            if owner is not None and body.startswith("   "):
                samples.setdefault(".".join(k for _, k in path[: owner + 1]), []).append(body)
            continue
        if not stripped or stripped.startswith("- ") or ":" not in stripped:
            continue
        path = [(col, key) for col, key in path if col < indent] + [(indent, stripped.split(":", 1)[0])]
    for section, lines in samples.items():
        for entry in entries(yaml.safe_load(textwrap.dedent("\n".join(lines)))):
            found |= {f"{section}.*.{option}" for option in entry}
    return found


def test_every_option_of_the_example_config_exists_and_every_option_is_documented() -> None:
    example = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    documented, model = _documented_options(example), _model_options(Settings)
    assert documented - model == set(), "documented in config.example.yaml but not an option"
    assert model - documented == set(), "options missing from config.example.yaml"


def test_a_reload_tells_live_options_from_those_needing_a_restart() -> None:
    from scheduler.config import Settings, changed_settings, is_live

    old = Settings()
    new = Settings(
        log={"level": "debug"},
        data_dir="/elsewhere",
        network={"pool": "10.99.0.0/16"},
        images={"registries": {"r.example": {"password": "s3cret"}}},
    )
    changed = changed_settings(old, new)
    assert changed == ["data_dir", "log.level", "images.registries", "network.pool"]
    assert [c for c in changed if is_live(c)] == ["log.level", "images.registries"]
    assert changed_settings(new, new) == []
    rotated = Settings(images={"registries": {"r.example": {"password": "other"}}})
    assert changed_settings(
        rotated, new.model_copy(update={"data_dir": old.data_dir, "log": old.log, "network": old.network})
    ) == ["images.registries"]
    assert not is_live("images.pull_policy") and not is_live("logx")


def test_a_backup_policy_per_environment_replaces_the_default() -> None:
    from scheduler.config import BackupSettings, is_live

    settings = BackupSettings(every=3600, keep=3, environments={"prod": {"every": 60, "keep": 100}})
    assert (settings.policy("prod").every, settings.policy("prod").keep) == (60, 100)
    assert (settings.policy("other").every, settings.policy("other").keep) == (3600, 3)
    assert is_live("backups.environments")
