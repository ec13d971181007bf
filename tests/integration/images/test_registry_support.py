"""The loopback registries the pull tests rely on: pushes land, and each auth mode is enforced."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from tests.support.images import TOOLBOX
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_anonymous_registry_serves_pushed_manifest(registry: Registry, image_archives: dict[str, Path]) -> None:
    ref = registry.push(image_archives[TOOLBOX], "schedulerdemo/toolbox:1.0")
    assert ref == f"{registry.host}/schedulerdemo/toolbox:1.0"
    status, headers, body = _get(
        f"{registry.url}/v2/schedulerdemo/toolbox/manifests/1.0",
        {"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 200
    manifest = json.loads(body)
    assert len(manifest["layers"]) == 2
    assert headers["Docker-Content-Digest"].startswith("sha256:")


def test_htpasswd_registry_refuses_anonymous_and_wrong_password(
    auth_registry: Registry, image_archives: dict[str, Path]
) -> None:
    auth_registry.push(image_archives[TOOLBOX], "schedulerdemo/toolbox:1.0")
    url = f"{auth_registry.url}/v2/schedulerdemo/toolbox/manifests/1.0"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert _get(url, accept)[0] == 401
    assert _get(url, accept | _basic("alice", "wrong"))[0] == 401
    assert _get(url, accept | _basic("alice", auth_registry.password))[0] == 200


def test_token_registry_issues_scoped_tokens(token_registry: Registry, image_archives: dict[str, Path]) -> None:
    token_registry.push(image_archives[TOOLBOX], "schedulerdemo/toolbox:1.0")
    issuer = token_registry.token_issuer
    assert issuer is not None
    url = f"{token_registry.url}/v2/schedulerdemo/toolbox/manifests/1.0"
    status, headers, _ = _get(url)
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and issuer.realm in challenge
    scope = "repository:schedulerdemo/toolbox:pull"
    token_url = f"{issuer.realm}?service={issuer.service}&scope={scope}"
    assert _get(token_url)[0] == 401
    assert _get(token_url, _basic("bob", "wrong"))[0] == 401
    status, _, body = _get(token_url, _basic("bob", token_registry.password))
    assert status == 200
    token = json.loads(body)["token"]
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert _get(url, accept | {"Authorization": f"Bearer {token}"})[0] == 200
    other = issuer.sign("bob", [{"type": "repository", "name": "other", "actions": ["pull"]}])
    assert _get(url, accept | {"Authorization": f"Bearer {other}"})[0] == 401
