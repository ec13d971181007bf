"""Image references: the one grammar, and normalisation the way Docker and containerd do it.

Request validation, the stacks and the runtime's pulls all read references here, so what the API
accepts is exactly what the runtime can pull (digests: sha256, sha384 or sha512, lowercase hex of
the exact length).

``postgres:16`` becomes ``docker.io/library/postgres:16``, a missing tag becomes ``latest``, a first
component with a dot, a colon or ``localhost`` is a registry host (``127.0.0.1:5000/app``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scheduler.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
"""Registry of references that name none, as in Docker."""
DOCKER_HUB_API_HOST = "registry-1.docker.io"
"""Where ``docker.io`` is actually served."""
DEFAULT_ALLOWED_REGISTRIES = (
    "docker.io",
    "ghcr.io",
    "quay.io",
    "registry.k8s.io",
    "gcr.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
)
"""Public registries by name; no address, so loopback and link-local hosts need explicit config."""
_LEGACY_DOMAINS = {"index.docker.io", "registry-1.docker.io"}

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_DOMAIN = re.compile(
    r"^(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; ``str()`` gives the canonical form."""

    domain: str
    """Registry host, with the port if any: ``docker.io``, ``127.0.0.1:5000``."""
    path: str
    """Repository path inside the registry: ``library/postgres``."""
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path`` without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def check_digest(value: str, field: str = "digest") -> str:
    """Validate ``algorithm:hex`` (sha256/384/512 with their exact lengths).

    Raises:
        InvalidArgument: naming ``field``.
    """
    algorithm, _, encoded = value.partition(":")
    if not _DIGEST.match(value) or algorithm not in _DIGEST_HEX_LENGTH:
        raise InvalidArgument(f"{field} {value!r} is not a sha256, sha384 or sha512 digest", field=field)
    if len(encoded) != _DIGEST_HEX_LENGTH[algorithm] or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InvalidArgument(
            f"{field} {value!r}: {algorithm} needs {_DIGEST_HEX_LENGTH[algorithm]} lowercase hex digits",
            field=field,
        )
    return value


def parse(text: str, field: str = "image") -> Reference:
    """Parse and normalise an image reference.

    Raises:
        InvalidArgument: the reference is malformed; the message names ``field`` and the bad part.
    """
    parsed = _parse(text)
    if isinstance(parsed, str):
        raise InvalidArgument(f"{field} {text!r} is not a valid image reference: {parsed}", field=field)
    return parsed


def problem(text: str) -> str | None:
    """What is wrong with a reference (it quoted, at most 64 characters of it), or None if it parses."""
    parsed = _parse(text)
    if not isinstance(parsed, str):
        return None
    shown = text if len(text) <= 64 else text[:61] + "..."
    return f"{shown!r} is not a valid image reference like docker.io/library/postgres:15: {parsed}"


def _parse(text: str) -> Reference | str:  # noqa: C901 - one grammar, read top to bottom
    """The reference, or why it is not one."""
    if not isinstance(text, str) or not text or text != text.strip():
        return "it is empty or has surrounding spaces"
    remainder, _, digest = text.partition("@")
    if "@" in text:
        try:
            check_digest(digest)
        except InvalidArgument:
            return f"bad digest {digest!r} (sha256, sha384 or sha512, lowercase hex of the exact length)"
    tag = ""
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            return f"bad tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)"
    if not remainder:
        return "no repository name"
    first, sep, rest = remainder.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
        if not _DOMAIN.match(domain):
            return f"bad registry host {domain!r}"
        port = domain.rpartition(":")[2] if ":" in domain and not domain.endswith("]") else ""
        if port and not 0 < int(port) <= 65535:
            return f"bad port in registry host {domain!r}"
    else:
        domain, path = DEFAULT_DOMAIN, remainder
    if domain in _LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if not path:
        return "no repository name"
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            why = "uppercase letters are not allowed" if component.lower() != component else "bad characters"
            return f"bad path component {component!r}: {why}"
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if len(f"{domain}/{path}") > _MAX_NAME:
        return f"the name is longer than {_MAX_NAME} characters"
    if not tag and not digest:
        tag = "latest"
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def normalize(text: str, field: str = "image") -> str:
    """The canonical string of a reference (``postgres`` -> ``docker.io/library/postgres:latest``)."""
    return str(parse(text, field))


def familiar(ref: Reference) -> str:
    """The short form Docker prints (``postgres:16``), for messages."""
    text = str(ref)
    if ref.domain == DEFAULT_DOMAIN:
        text = text.removeprefix(f"{DEFAULT_DOMAIN}/").removeprefix("library/")
    return text
