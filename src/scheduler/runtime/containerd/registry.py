"""Client of the registry HTTP API v2: resolve a reference, fetch manifests and stream blobs.

Endpoints per host follow containerd's hosts.toml model: the configured mirrors in order, then the
host itself (``docker.io`` is served by ``registry-1.docker.io``). HTTPS is the default; plain HTTP is
used only for hosts marked ``insecure`` and for mirrors written as ``http://``. Authentication answers
the registry's challenge: bearer tokens (anonymous or with Basic credentials at the token issuer,
cached per scope) or Basic directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from scheduler import log
from scheduler.errors import FailedPrecondition, NotFound, PermissionDenied, SchedulerError, Unavailable
from scheduler.reference import DEFAULT_DOMAIN, DOCKER_HUB_API_HOST, Reference
from scheduler.runtime.containerd.descriptors import (
    ACCEPT_MANIFESTS,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    verify_digest,
)
from scheduler.runtime.containerd.image_options import ImageOptions, RegistryOptions

# Media types and descriptors live in descriptors; they are importable from here as before.
__all__ = [
    "ACCEPT_MANIFESTS",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_MANIFEST_BYTES",
    "Descriptor",
    "Endpoint",
    "RegistryClient",
    "check_registry_host",
    "endpoints_for",
    "parse_challenge",
    "verify_digest",
]

_log = log.get("registry")


# --- endpoints and auth -------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One place a registry host's content can be fetched from."""

    base_url: str
    """``https://registry-1.docker.io`` or ``http://127.0.0.1:5000``."""
    host: str
    mirror: bool = False
    username: str = ""
    password: str = field(default="", repr=False)


_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> (``bearer``, {realm, service, ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _CHALLENGE.finditer(rest)}
    return scheme.lower(), params


def endpoints_for(ref: Reference, registries: Mapping[str, RegistryOptions]) -> list[Endpoint]:
    """Mirrors of ``ref.domain`` in the configured order, then the registry itself."""
    host_settings = registries.get(ref.domain, RegistryOptions())
    out: list[Endpoint] = []
    for mirror in host_settings.mirrors:
        url = mirror.rstrip("/").removesuffix("/v2")
        if "://" not in url:
            mirror_host = url
            insecure = registries.get(mirror_host, RegistryOptions()).insecure
            url = f"{'http' if insecure else 'https'}://{mirror_host}"
        mirror_host = httpx.URL(url).netloc.decode()
        creds = registries.get(mirror_host, RegistryOptions())
        out.append(Endpoint(url, mirror_host, True, creds.username, creds.password))
    api_host = DOCKER_HUB_API_HOST if ref.domain == DEFAULT_DOMAIN else ref.domain
    scheme = "http" if host_settings.insecure else "https"
    out.append(
        Endpoint(
            f"{scheme}://{api_host}",
            ref.domain,
            False,
            host_settings.username,
            host_settings.password,
        )
    )
    return out


class RegistryClient:
    """Fetches manifests and blobs of one pull; holds the tokens it obtained.

    Args:
        registries: per-host settings (mirrors, insecure, credentials), keyed by registry host.
        transport: replaces the network, for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        registries: Mapping[str, RegistryOptions],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.registries = registries
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=True,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"User-Agent": "scheduler"},
        )
        self._tokens: dict[tuple[str, str], str] = {}
        self._challenges: dict[str, tuple[str, dict[str, str]]] = {}
        self.token_requests = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- public operations ------------------------------------------------------------------

    async def resolve(self, ref: Reference) -> tuple[Endpoint, Descriptor]:
        """Find the root descriptor of ``ref``, trying each endpoint in order.

        Raises:
            NotFound: no endpoint has the manifest.
            PermissionDenied: the registry refused the credentials (or demands some).
            Unavailable: no endpoint could be reached.
        """
        failures: list[tuple[Endpoint, SchedulerError]] = []
        for endpoint in endpoints_for(ref, self.registries):
            try:
                return endpoint, await self._resolve_at(endpoint, ref)
            except (NotFound, PermissionDenied, Unavailable, FailedPrecondition) as err:
                failures.append((endpoint, err))
        # The registry's own answer decides the error class; mirrors only add to the message.
        last_endpoint, last = failures[-1]
        if len(failures) > 1:
            tried = "; ".join(f"{e.base_url}: {err.message}" for e, err in failures[:-1])
            raise type(last)(f"{last.message} (mirrors tried first: {tried})", image=str(ref)) from last
        raise last

    async def fetch_manifest(self, endpoint: Endpoint, ref: Reference, desc: Descriptor) -> bytes:
        """GET a manifest or index by digest, checking size and digest.

        Raises:
            FailedPrecondition: the document is too large or does not match ``desc``.
        """
        if desc.size > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(f"manifest {desc.digest} of {ref} is {desc.size} bytes, over the limit")
        url = f"{endpoint.base_url}/v2/{ref.path}/manifests/{desc.digest}"
        accept = f"{desc.media_type}, {ACCEPT_MANIFESTS}" if desc.media_type else ACCEPT_MANIFESTS
        resp = await self._request(endpoint, ref, "GET", url, {"Accept": accept}, what=f"manifest {desc.digest}")
        body = resp.content
        if len(body) != desc.size:
            raise FailedPrecondition(
                f"manifest {desc.digest} of {ref} from {endpoint.host}: got {len(body)} bytes, expected {desc.size}"
            )
        verify_digest(body, desc.digest, f"manifest of {ref} from {endpoint.host}")
        return body

    @asynccontextmanager
    async def blob(
        self, endpoint: Endpoint, ref: Reference, desc: Descriptor, chunk_size: int = 1 << 20
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob's bytes (the caller verifies them while writing)."""
        url = f"{endpoint.base_url}/v2/{ref.path}/blobs/{desc.digest}"
        headers = {"Accept": f"{desc.media_type or 'application/octet-stream'}, */*"}
        resp = await self._request(endpoint, ref, "GET", url, headers, stream=True, what=f"blob {desc.digest}")
        try:
            yield _chunks(resp, chunk_size, endpoint, desc)
        finally:
            await resp.aclose()

    # --- internals ----------------------------------------------------------------------------

    async def _resolve_at(self, endpoint: Endpoint, ref: Reference) -> Descriptor:
        url = f"{endpoint.base_url}/v2/{ref.path}/manifests/{ref.object}"
        headers = {"Accept": ACCEPT_MANIFESTS}
        resp = await self._request(endpoint, ref, "HEAD", url, headers, what="manifest")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = ref.digest or resp.headers.get("Docker-Content-Digest", "")
        length = resp.headers.get("Content-Length", "")
        if digest and length.isdigit() and media_type in MANIFEST_TYPES | INDEX_TYPES:
            return Descriptor(media_type, digest, int(length))
        resp = await self._request(endpoint, ref, "GET", url, headers, what="manifest")
        body = resp.content
        if len(body) > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(f"manifest of {ref} is {len(body)} bytes, over the limit")
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            media_type = _sniff_media_type(body, str(ref))
        if ref.digest:
            verify_digest(body, ref.digest, f"manifest of {ref} from {endpoint.host}")
        return Descriptor(media_type, ref.digest or "sha256:" + hashlib.sha256(body).hexdigest(), len(body))

    async def _request(
        self,
        endpoint: Endpoint,
        ref: Reference,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        stream: bool = False,
        what: str,
    ) -> httpx.Response:
        scope = f"repository:{ref.path}:pull"
        label = f"{what} of {ref} at {endpoint.host}"
        auth = await self._cached_auth(endpoint, scope)
        resp = await self._send(endpoint, method, url, {**headers, **auth}, stream, label)
        if resp.status_code == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            await resp.aclose()
            if not challenge:
                raise PermissionDenied(f"registry {endpoint.host} refused {label} without an auth challenge")
            self._challenges[endpoint.base_url] = parse_challenge(challenge)
            auth = await self._authorize(endpoint, scope, refresh=bool(auth))
            resp = await self._send(endpoint, method, url, {**headers, **auth}, stream, label)
            if resp.status_code in (401, 403):
                await resp.aclose()
                who = f"the credentials of {endpoint.username!r}" if endpoint.username else "anonymous access"
                raise PermissionDenied(f"registry {endpoint.host} refused {who} for {label}", image=str(ref))
        if resp.status_code < 300:
            return resp
        status = resp.status_code
        detail = "" if stream or method == "HEAD" else resp.text[:200]
        await resp.aclose()
        if status == 404:
            raise NotFound(f"{label}: not found (HTTP 404)", image=str(ref))
        if status == 403:
            raise PermissionDenied(f"{label}: access denied (HTTP 403) {detail}".strip(), image=str(ref))
        if status == 429 or status >= 500:
            raise Unavailable(f"{label}: registry answered HTTP {status} {detail}".strip(), image=str(ref))
        raise FailedPrecondition(f"{label}: registry answered HTTP {status} {detail}".strip(), image=str(ref))

    async def _send(
        self, endpoint: Endpoint, method: str, url: str, headers: dict[str, str], stream: bool, label: str
    ) -> httpx.Response:
        try:
            request = self._http.build_request(method, url, headers=headers)
            return await self._http.send(request, stream=stream)
        except httpx.TransportError as err:
            # The cause stays in the log: telling a client "refused" from "timed out" would make
            # image references a port scanner.
            _log.info("registry.unreachable", endpoint=endpoint.base_url, error=f"{type(err).__name__} {err}")
            raise Unavailable(f"registry {endpoint.host} cannot be reached for {label}") from err

    async def _cached_auth(self, endpoint: Endpoint, scope: str) -> dict[str, str]:
        challenge = self._challenges.get(endpoint.base_url)
        if challenge is None:
            return {}
        scheme, params = challenge
        if scheme == "bearer":
            token = self._tokens.get((endpoint.base_url, scope))
            if token is None:
                return await self._authorize(endpoint, scope, refresh=False)
            return {"Authorization": f"Bearer {token}"}
        if scheme == "basic" and endpoint.username:
            return {"Authorization": _basic(endpoint)}
        return {}

    async def _authorize(self, endpoint: Endpoint, scope: str, refresh: bool) -> dict[str, str]:
        scheme, params = self._challenges[endpoint.base_url]
        if scheme == "basic":
            if not endpoint.username:
                raise PermissionDenied(
                    f"registry {endpoint.host} requires credentials: set images.registries"
                    f"[{endpoint.host!r}].username and password"
                )
            return {"Authorization": _basic(endpoint)}
        if scheme != "bearer":
            raise PermissionDenied(f"registry {endpoint.host} asks for unsupported auth scheme {scheme!r}")
        key = (endpoint.base_url, scope)
        if not refresh and key in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[key]}"}
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise PermissionDenied(f"registry {endpoint.host} sent a bearer challenge without a usable realm")
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": _basic(endpoint)} if endpoint.username else {}
        self.token_requests += 1
        try:
            resp = await self._http.get(realm, params=query, headers=headers)
        except httpx.TransportError as err:
            raise Unavailable(f"token issuer {realm} of registry {endpoint.host} cannot be reached: {err}") from err
        if resp.status_code in (401, 403):
            who = f"the credentials of {endpoint.username!r}" if endpoint.username else "anonymous access"
            raise PermissionDenied(f"token issuer {realm} of registry {endpoint.host} refused {who}")
        if resp.status_code >= 300:
            raise Unavailable(f"token issuer {realm} of registry {endpoint.host} answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError) as err:
            raise Unavailable(f"token issuer {realm} answered something that is not JSON") from err
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token issuer {realm} of registry {endpoint.host} returned no token")
        self._tokens[key] = token
        return {"Authorization": f"Bearer {token}"}


def _basic(endpoint: Endpoint) -> str:
    raw = f"{endpoint.username}:{endpoint.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


async def _chunks(resp: httpx.Response, chunk_size: int, endpoint: Endpoint, desc: Descriptor) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_bytes(chunk_size):
            yield chunk
    except httpx.TransportError as err:
        raise Unavailable(f"blob {desc.digest} from {endpoint.host}: transfer failed: {err}") from err


def _sniff_media_type(body: bytes, what: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise FailedPrecondition(f"manifest of {what} is not JSON") from err
    media_type = doc.get("mediaType", "") if isinstance(doc, dict) else ""
    if media_type in MANIFEST_TYPES | INDEX_TYPES:
        return str(media_type)
    if isinstance(doc, dict) and "manifests" in doc:
        return OCI_INDEX
    if isinstance(doc, dict) and "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise FailedPrecondition(f"manifest of {what} has an unsupported media type {media_type!r}")


async def check_registry_host(host: str, settings: ImageOptions, image: str) -> None:
    """Refuse to pull from ``host`` unless the config allows it.

    A host must be in ``images.allowed_registries`` or a key of ``images.registries``; a name
    allowed only by the first that resolves to a loopback, link-local or unspecified address is
    refused too (the daemon's own services live there), unless it is a key of the second.

    Raises:
        PermissionDenied: naming the host and the option that would allow it.
    """
    if not settings.registry_allowed(host):
        raise PermissionDenied(
            f"image {image} is not present and registry {host!r} is not allowed: "
            "add it to images.allowed_registries or images.registries",
            image=image,
        )
    if host in settings.registries:
        return
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable: the pull fails on its own, without a connection
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            raise PermissionDenied(
                f"image {image}: registry {host!r} resolves to a loopback or link-local address; "
                "list it under images.registries to pull from it",
                image=image,
            )
