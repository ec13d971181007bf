"""The daemon runs without pydantic plugins, and without importing what pydantic looks for them with.

pydantic builds each model's validator through ``pydantic.plugin._schema_validator``, which
imports ``pydantic.plugin._loader``; that module imports ``importlib.metadata`` at its top (and
with it email, zipfile and csv: 1.3 MB of an idle daemon's RSS) to read the ``pydantic`` entry
points of every installed distribution. pydantic's own switch, ``PYDANTIC_DISABLE_PLUGINS=__all__``,
skips that scan but not the import (pydantic 2.14 checks the variable inside ``get_plugins``).
:func:`disable` sets the variable unless the environment already sets it, and while it disables
every plugin puts in the loader's place a module whose ``get_plugins`` answers what pydantic's
own answers then: no plugin. Set ``PYDANTIC_DISABLE_PLUGINS=`` (empty) to run the daemon with
the plugins of its virtualenv, looked for by pydantic as usual.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable

VARIABLE = "PYDANTIC_DISABLE_PLUGINS"
LOADER = "pydantic.plugin._loader"
_ALL = ("__all__", "1", "true")
"""The values with which pydantic's ``get_plugins`` returns no plugin at all."""


def _no_plugins() -> Iterable[object]:
    """What ``get_plugins`` of pydantic returns when the variable disables every plugin."""
    return ()


def disable() -> None:
    """Load no pydantic plugin unless ``PYDANTIC_DISABLE_PLUGINS`` says otherwise; before any model is built."""
    os.environ.setdefault(VARIABLE, "__all__")
    if os.environ[VARIABLE] not in _ALL or LOADER in sys.modules:
        return
    loader = types.ModuleType(LOADER, "Stands in for pydantic's plugin loader: no plugin, no importlib.metadata.")
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[LOADER] = loader
