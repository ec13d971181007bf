"""Image manifests and configs as containerd stores them: GC labels, media types, parsing, platform choice."""

from __future__ import annotations

import builtins
import hashlib
import json
import platform as host
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scheduler import domain
from scheduler.errors import (
    FailedPrecondition,
    NotFound,
)
from scheduler.runtime.containerd._gen.containerd.types import descriptor_pb2 as descriptor_pb
from scheduler.runtime.containerd.descriptors import Descriptor

# --- labels containerd's garbage collector follows (metadata/gc.go) ---------------------------

GC_REF_CONTENT = "containerd.io/gc.ref.content"
"""Prefix of a parent's labels naming its children: ``.config``, ``.l.<i>`` (layers), ``.m.<i>``."""
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"
"""``.<snapshotter>`` on the config blob names the image's top snapshot (chain ID)."""
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
"""On a layer blob: the diff ID of its uncompressed tar (informational)."""
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source"
"""``.<registry hostname>=<repository>``: where a blob was pulled from."""
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = frozenset(
    {
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    }
)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Snapshot names of the layers: ``chain[0] = diff[0]``, then ``sha256(chain[i-1] + " " + diff[i])``."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this machine in OCI terms."""
    machine = host.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", ""),
        "arm64": ("arm64", ""),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return "linux", arch, variant


def choose_manifest(index: Mapping[str, Any], where: str, platform: tuple[str, str, str]) -> tuple[int, Descriptor]:
    """The position and descriptor of the index entry for ``platform`` (os, arch, variant).

    Raises:
        NotFound: no entry matches; the message lists the platforms offered.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise FailedPrecondition(f"{where}: the index lists no manifests")
    want_os, want_arch, want_variant = platform
    offered: list[str] = []
    fallback: tuple[int, Descriptor] | None = None
    for position, raw in enumerate(entries):
        desc = Descriptor.from_json(raw, where)
        plat = desc.platform
        if plat is None:
            fallback = fallback or (position, desc)
            continue
        os_, arch, variant = plat.get("os", ""), plat.get("architecture", ""), plat.get("variant", "")
        offered.append("/".join(p for p in (os_, arch, variant) if p))
        if os_ == want_os and arch == want_arch and (not want_variant or not variant or variant == want_variant):
            return position, desc
    if fallback is not None:
        return fallback
    want = "/".join(p for p in platform if p)
    raise NotFound(f"{where} has no manifest for {want} (it offers {', '.join(offered) or 'none'})")


def image_config_from_json(doc: Mapping[str, Any]) -> domain.ImageConfig:
    """The runtime-relevant part of an OCI image config."""
    body = doc.get("config") or {}

    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key) or []
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    ports = body.get("ExposedPorts") or {}
    labels = body.get("Labels") or {}
    return domain.ImageConfig(
        env=strings("Env"),
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        user=str(body.get("User") or ""),
        working_dir=str(body.get("WorkingDir") or ""),
        stop_signal=str(body.get("StopSignal") or ""),
        exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise FailedPrecondition(f"{what} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class ParsedManifest:
    """A manifest's config and layers, with the diff IDs its config lists."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_manifest(data: bytes, desc: Descriptor, where: str) -> ParsedManifest:
    """Read config and layer descriptors from an image manifest.

    Raises:
        FailedPrecondition: the manifest is malformed or uses an unsupported layer type.
    """
    doc = json_object(data, f"manifest {desc.digest} of {where}")
    if "config" not in doc or not isinstance(doc.get("layers"), list):
        raise FailedPrecondition(f"manifest {desc.digest} of {where} has no config or layers")
    config = Descriptor.from_json(doc["config"], f"manifest {desc.digest}")
    layers = tuple(Descriptor.from_json(raw, f"manifest {desc.digest}") for raw in doc["layers"])
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise FailedPrecondition(f"layer {layer.digest} of {where} has unsupported media type {layer.media_type!r}")
    return ParsedManifest(desc, config, layers)


def diff_ids_of(config: Mapping[str, Any], where: str) -> builtins.list[str]:
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise FailedPrecondition(f"config of {where} has no rootfs.diff_ids")
    return [str(d) for d in diff_ids]


def descriptor_to_pb(desc: Descriptor) -> descriptor_pb.Descriptor:
    return descriptor_pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


def descriptor_from_pb(desc: descriptor_pb.Descriptor) -> Descriptor:
    return Descriptor(desc.media_type, desc.digest, desc.size)
