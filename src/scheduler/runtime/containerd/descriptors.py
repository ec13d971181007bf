"""Media types and content descriptors of the OCI and Docker image formats, with digest verification."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler import openssl
from scheduler.errors import FailedPrecondition

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
ACCEPT_MANIFESTS = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])
"""Sent when resolving, in containerd's order."""
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""containerd's limit on manifest and index documents."""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> Descriptor:
        """Read a descriptor object of a manifest or index.

        Raises:
            FailedPrecondition: a field is missing or of the wrong type; ``where`` names the document.
        """
        try:
            digest, size = raw["digest"], raw["size"]
            media_type = raw.get("mediaType", "")
        except (KeyError, TypeError) as err:
            raise FailedPrecondition(f"{where}: a descriptor lacks digest or size") from err
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0 or not isinstance(media_type, str):
            raise FailedPrecondition(f"{where}: malformed descriptor {dict(raw)!r}")
        platform = raw.get("platform")
        annotations = raw.get("annotations") or {}
        return cls(
            media_type,
            digest,
            size,
            platform if isinstance(platform, dict) else None,
            dict(annotations) if isinstance(annotations, dict) else {},
        )


def verify_digest(data: bytes, expected: str, what: str) -> None:
    """Check bytes against a sha256/sha512 digest.

    Raises:
        FailedPrecondition: naming the expected digest and the one computed.
    """
    algorithm, _, _ = expected.partition(":")
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise FailedPrecondition(f"{what}: unsupported digest algorithm in {expected}")
    actual = f"{algorithm}:{openssl.hasher(algorithm, data).hexdigest()}"
    if actual != expected:
        raise FailedPrecondition(f"{what}: content digest {actual} does not match the expected {expected}")
