"""The demo image archives, built once per test session (pytest plugin).

``image_archives`` maps each image name (``docker.io/library/postgres:15``...) to its archive under
``images/out``; the builder's cache makes this instant when nothing changed since ``make images``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from images.build import build
from images.rootfs import BuildError

POSTGRES = "docker.io/library/postgres:15"
BACKEND = "docker.io/schedulerdemo/backend:1.0"
FRONTEND = "docker.io/schedulerdemo/frontend:1.0"
TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"


@pytest.fixture(scope="session")
def image_archives() -> dict[str, Path]:
    """Image name -> OCI/docker archive path, for all four demo images."""
    try:
        archives = build()
    except BuildError as err:
        message = f"demo images cannot be built on this host: {err}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    missing = [name for name, path in archives.items() if not path.is_file()]
    assert not missing, f"image archives not built: {missing}"
    return archives
