"""The daemon's entry point keeps pydantic from looking for plugins, as pydantic's own switch would."""

from __future__ import annotations

import os
import subprocess
import sys

# In a fresh interpreter: the CLI module (the daemon's entry point), then a model built and used.
PROBE = """
import os, sys
import scheduler.cli
from pydantic import BaseModel
from pydantic.plugin._loader import get_plugins
class Probe(BaseModel):
    port: int
assert Probe(port="50051").port == 50051
from scheduler.config import load_settings
assert load_settings(None, {"server": {"listen": "127.0.0.1:50051"}}).server.listen == "127.0.0.1:50051"
print(repr(os.environ.get("PYDANTIC_DISABLE_PLUGINS")), list(get_plugins()) == [], "importlib.metadata" in sys.modules)
"""


def _probe(variable: str | None) -> list[str]:
    # Neither the caller's plugin switch nor its SCHEDULER_* settings: the probe's own, only.
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS" and not k.startswith("SCHEDULER_")}
    if variable is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = variable
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_the_entry_point_disables_plugins_without_importing_importlib_metadata() -> None:
    assert _probe(None) == ["'__all__'", "True", "False"]
    assert _probe("true") == ["'true'", "True", "False"]


def test_an_empty_variable_lets_pydantic_look_for_plugins_as_usual() -> None:
    # pydantic's own loader then: it imports importlib.metadata to read the entry points.
    assert _probe("") == ["''", "True", "True"]


def test_pydantic_own_loader_finds_no_plugin_when_every_plugin_is_disabled() -> None:
    # What the stand-in answers is what pydantic's loader answers under the same variable.
    code = "from pydantic.plugin._loader import get_plugins; print(list(get_plugins()))"
    env = {**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True)
    assert run.stdout.strip() == "[]"
