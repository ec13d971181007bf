"""Shared by the image tests: what a failed operation may have left, and a registry made of an archive."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd.client import ContainerdClient


async def leftovers(client: ContainerdClient) -> tuple[int, int]:
    """(leases, ingests) in the client's namespace: both must be 0 after any image operation."""
    leases = await client.leases.list(leases_pb.ListRequest())
    statuses = await client.content.list_statuses(content_pb.ListStatusesRequest())
    return len(leases.leases), len(statuses.statuses)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ArchiveRegistry:
    """An in-process registry (an httpx handler) serving the blobs of an OCI archive.

    ``manifests`` maps a tag or digest to (media type, bytes); ``corrupt`` lists blob digests
    served with one byte changed; ``requests`` records every path asked for.
    """

    blobs: dict[str, bytes]
    manifests: dict[str, tuple[str, bytes]]
    corrupt: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)

    @classmethod
    def from_archive(cls, archive: Path, tag: str) -> ArchiveRegistry:
        with tarfile.open(archive) as tar:
            blobs = {
                "sha256:" + m.name.rsplit("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith("blobs/sha256/")
            }
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        root = index["manifests"][0]
        manifest = blobs[root["digest"]]
        manifests = {tag: (root["mediaType"], manifest), root["digest"]: (root["mediaType"], manifest)}
        return cls(blobs, manifests)

    def add_index(self, tag: str, entries: list[dict[str, object]]) -> str:
        """Serve an OCI index of ``entries`` under ``tag``; return its digest."""
        doc = json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        ).encode()
        media_type = "application/vnd.oci.image.index.v1+json"
        self.manifests[tag] = (media_type, doc)
        self.manifests[digest_of(doc)] = (media_type, doc)
        return digest_of(doc)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(path)
        if path == "/v2/":
            return httpx.Response(200)
        match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
        if not match:
            return httpx.Response(404)
        kind, ref = match[2], match[3]
        if kind == "manifests":
            if ref not in self.manifests:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            media_type, data = self.manifests[ref]
            headers = {"Content-Type": media_type, "Docker-Content-Digest": digest_of(data)}
            if request.method == "HEAD":
                return httpx.Response(200, headers={**headers, "Content-Length": str(len(data))})
            return httpx.Response(200, headers=headers, content=data)
        if ref not in self.blobs:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
        data = self.blobs[ref]
        if ref in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return httpx.Response(200, headers={"Content-Type": "application/octet-stream"}, content=data)
