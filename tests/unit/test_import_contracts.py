"""The import contracts forbid something: wrong imports planted in a copy of the tree break them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_wrong_imports_break_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "scheduler", tmp_path / "src" / "scheduler", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    plant = {
        # The service reaching for an implementation instead of a Protocol.
        "service/environments.py": "import scheduler.storage.sqlite  # noqa\n",
        # The orchestrator importing the layer above it.
        "orchestrator/plan.py": "import scheduler.service  # noqa\n",
        # Generated containerd stubs outside the containerd runtime.
        "orchestrator/status.py": "import scheduler.runtime.containerd._gen  # noqa\n",
        # The orchestrator taking the host's volumes instead of the VolumeStore Protocol.
        "orchestrator/teardown.py": "import scheduler.volumes.host  # noqa\n",
        # The network reading the daemon's configuration instead of its own settings.
        "network/iptables.py": "import scheduler.config  # noqa\n",
        # The containerd runtime reading the daemon's configuration instead of its own options.
        "runtime/containerd/registry.py": "import scheduler.config  # noqa\n",
        # The neutral gRPC status helpers reaching back into one of the clients that use them.
        "rpcstatus.py": "import scheduler.storage.etcd.errors  # noqa\n",
    }
    for relative, line in plant.items():
        path = tmp_path / "src" / "scheduler" / relative
        path.write_text(path.read_text() + line)
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    for contract in (
        "layers point one way: no layer imports one above it BROKEN",
        "only the composition root (daemon) imports implementations BROKEN",
        "generated stubs only inside their owners BROKEN",
        "runtime, network, storage, volumes do not read the daemon's config BROKEN",
    ):
        assert contract in out, out
    assert "scheduler.service.environments -> scheduler.storage.sqlite" in out
    assert "scheduler.orchestrator.plan -> scheduler.service" in out
    assert "scheduler.orchestrator.teardown -> scheduler.volumes.host" in out
    assert "scheduler.network.iptables -> scheduler.config" in out
    assert "scheduler.runtime.containerd.registry -> scheduler.config" in out
    assert "scheduler.rpcstatus -> scheduler.storage.etcd.errors" in out
