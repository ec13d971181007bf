"""Layer blobs and image archives: an OCI image layout in a tar, plus Docker's ``manifest.json``.

containerd, skopeo (``oci-archive:``) and ``docker load`` all read the same file: the OCI
``index.json`` names the manifest, and the docker-archive ``manifest.json`` points at the same blobs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images.rootfs import Rootfs

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Layer:
    """A gzip layer blob on disk with both of its digests."""

    path: Path
    digest: str
    """Digest of the compressed blob (what manifests list)."""
    diff_id: str
    """Digest of the uncompressed tar (what the config's rootfs lists)."""
    size: int
    comment: str


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the ``config`` object of the OCI config JSON)."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = "/"
    stop_signal: str = "SIGTERM"
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self.inner.write(view)
        return view.nbytes

    def flush(self) -> None:
        self.inner.flush()


def write_layer(rootfs: Rootfs, blob_dir: Path, comment: str) -> Layer:
    """Write ``rootfs`` as a gzip blob under ``blob_dir``, named by its digest."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    tmp = blob_dir / f".tmp-{os.getpid()}-{id(rootfs)}"
    with open(tmp, "wb") as raw:
        compressed = _Hashing(raw)
        # mtime=0 and no file name keep the gzip header, and so the digest, reproducible.
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0, filename="") as gz:  # type: ignore[arg-type]
            plain = _Hashing(gz)
            rootfs.write_tar(plain)  # type: ignore[arg-type]
    digest = "sha256:" + compressed.sha.hexdigest()
    final = blob_dir / digest.split(":", 1)[1]
    os.replace(tmp, final)
    return Layer(final, digest, "sha256:" + plain.sha.hexdigest(), compressed.size, comment)


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def config_json(config: ImageConfig, layers: list[Layer]) -> bytes:
    """The OCI image config: platform, process settings and the layers' diff IDs."""
    body: dict[str, Any] = {
        "Env": list(config.env),
        "WorkingDir": config.working_dir,
        "StopSignal": config.stop_signal,
    }
    if config.entrypoint:
        body["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        body["Cmd"] = list(config.cmd)
    if config.user:
        body["User"] = config.user
    if config.exposed_ports:
        body["ExposedPorts"] = {port: {} for port in config.exposed_ports}
    if config.volumes:
        body["Volumes"] = {path: {} for path in config.volumes}
    if config.labels:
        body["Labels"] = dict(config.labels)
    return _json_bytes(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": EPOCH,
            "config": body,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": EPOCH, "created_by": layer.comment} for layer in layers],
        }
    )


def split_name(name: str) -> tuple[str, str]:
    """``docker.io/library/postgres:15`` -> (``docker.io/library/postgres``, ``15``)."""
    repo, _, tag = name.rpartition(":")
    return repo, tag


def docker_tag(name: str) -> str:
    """The short form Docker prints: ``postgres:15``, ``schedulerdemo/backend:1.0``."""
    return name.removeprefix("docker.io/").removeprefix("library/")


def write_archive(out: Path, name: str, config: ImageConfig, layers: list[Layer]) -> str:
    """Write the image archive atomically; return the manifest digest."""
    config_bytes = config_json(config, layers)
    config_desc = _descriptor(MEDIA_CONFIG, config_bytes)
    manifest_bytes = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_desc,
            "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size} for layer in layers],
        }
    )
    manifest_desc = _descriptor(MEDIA_MANIFEST, manifest_bytes)
    manifest_desc["annotations"] = {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: split_name(name)[1]}
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index_bytes = _json_bytes({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_desc]})

    def blob_path(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    docker_manifest = _json_bytes(
        [
            {
                "Config": blob_path(config_desc["digest"]),
                "RepoTags": [docker_tag(name)],
                "Layers": [blob_path(layer.digest) for layer in layers],
            }
        ]
    )
    small = {
        "oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"}),
        "index.json": index_bytes,
        "manifest.json": docker_manifest,
        blob_path(config_desc["digest"]): config_bytes,
        blob_path(manifest_desc["digest"]): manifest_bytes,
    }
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        files: list[tuple[str, bytes | Path]] = [(k, v) for k, v in small.items()]
        seen = set(small)
        for layer in layers:
            if blob_path(layer.digest) not in seen:
                seen.add(blob_path(layer.digest))
                files.append((blob_path(layer.digest), layer.path))
        for path, content in sorted(files, key=lambda item: item[0]):
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = 0o644, 0
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with open(content, "rb") as src:
                    tar.addfile(info, src)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    os.replace(tmp, out)
    return str(manifest_desc["digest"])
