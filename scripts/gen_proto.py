"""Generate Python stubs (code, .pyi, gRPC) and Go stubs from the project's .proto files, reproducibly.

Three trees: ``proto/scheduler`` (our API) -> ``src/scheduler/api/_gen``, ``proto/containerd``
(our subset of containerd's API) -> ``src/scheduler/runtime/containerd/_gen`` and ``proto/etcd``
(our copy of etcd 3.4's v3 API) -> ``src/scheduler/storage/etcd/_gen``. protoc writes
imports relative to the proto root (``from containerd.types import mount_pb2``); they are
rewritten to absolute package paths so that the stubs live inside the ``scheduler`` package.

Go stubs of the public API go to ``gen/go`` (checked in, so a Go client builds from a fresh clone
without protoc); they come from the system's protoc, protoc-gen-go and protoc-gen-go-grpc
(Debian's), whose versions the generated headers record.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import google.rpc.status_pb2
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # mypy-protobuf's plugins live beside the interpreter
TREES = {
    "scheduler": "scheduler.api._gen",
    "containerd": "scheduler.runtime.containerd._gen",
    "etcd": "scheduler.storage.etcd._gen",
}


def generate(out_root: Path) -> None:
    """Generate every tree under ``out_root`` (the ``src`` directory or a scratch copy)."""
    bundled = Path(grpc_tools.__file__).parent / "_proto"
    # googleapis-common-protos ships google/rpc/*.proto beside its generated modules.
    googleapis = Path(google.rpc.status_pb2.__file__).parent.parent.parent
    for top, package in TREES.items():
        protos = sorted((ROOT / "proto" / top).rglob("*.proto"))
        if not protos:
            continue
        out = out_root / Path(*package.split("."))
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        args = [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{bundled}",
            f"-I{googleapis}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out}",
            f"--mypy_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out={out}",
            *[str(p.relative_to(ROOT / "proto")) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {top}")
        pattern = re.compile(rf"^(from|import) ({re.escape(top)})(\.| )", re.M)
        for path in out.rglob("*.py*"):
            text = pattern.sub(rf"\1 {package}.\2\3", path.read_text())
            path.write_text(text)
        for directory in [out, *[d for d in out.rglob("*") if d.is_dir()]]:
            (directory / "__init__.py").touch()


def generate_go(out: Path) -> None:
    """Generate the Go package of ``proto/scheduler`` under ``out`` (``gen/go`` or a scratch copy)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "scheduler").rglob("*.proto"))
    subprocess.run(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            "-I/usr/include",
            f"--go_out={out}",
            "--go_opt=paths=source_relative",
            f"--go-grpc_out={out}",
            "--go-grpc_opt=paths=source_relative",
            *protos,
        ],
        check=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        generate(Path(sys.argv[1]))
        generate_go(Path(sys.argv[1]) / "gen-go")
    else:
        generate(ROOT / "src")
        generate_go(ROOT / "gen" / "go")
