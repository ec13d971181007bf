"""Image reference parsing and normalisation, as Docker does it."""

from __future__ import annotations

import pytest

from scheduler.errors import InvalidArgument
from scheduler.reference import check_digest, familiar, normalize, parse

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres", "docker.io/library/postgres:latest"),
        ("postgres:16", "docker.io/library/postgres:16"),
        ("library/postgres:16", "docker.io/library/postgres:16"),
        ("schedulerdemo/backend:1.0", "docker.io/schedulerdemo/backend:1.0"),
        ("docker.io/postgres:15", "docker.io/library/postgres:15"),
        ("index.docker.io/library/postgres:15", "docker.io/library/postgres:15"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("localhost/app:v1", "localhost/app:v1"),
        ("localhost:5000/team/app:v1.2-rc_3", "localhost:5000/team/app:v1.2-rc_3"),
        ("ghcr.io/org/sub/app:1", "ghcr.io/org/sub/app:1"),
        (f"postgres@{DIGEST}", f"docker.io/library/postgres@{DIGEST}"),
        (f"postgres:16@{DIGEST}", f"docker.io/library/postgres:16@{DIGEST}"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        ("my-registry.example.com:443/a__b/c-d:x", "my-registry.example.com:443/a__b/c-d:x"),
    ],
)
def test_normalises_like_docker(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_parts() -> None:
    ref = parse("127.0.0.1:5000/team/app:v1")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("127.0.0.1:5000", "team/app", "v1", "")
    assert ref.name == "127.0.0.1:5000/team/app"
    assert ref.object == "v1"
    pinned = parse(f"postgres:16@{DIGEST}")
    assert pinned.object == DIGEST
    assert familiar(parse("postgres:16")) == "postgres:16"
    assert familiar(parse("schedulerdemo/backend:1.0")) == "schedulerdemo/backend:1.0"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (" postgres", "spaces"),
        ("Postgres", "uppercase"),
        ("team/App:1", "uppercase"),
        ("postgres:", "bad tag"),
        ("postgres:-x", "bad tag"),
        ("postgres:" + "x" * 129, "bad tag"),
        ("postgres@sha256:abc", "bad digest"),
        ("postgres@md5:" + "a" * 32, "bad digest"),
        ("postgres@sha256:" + "A" * 64, "bad digest"),
        ("host:99999/app", "bad port"),
        ("bad_host.io/app", "bad registry host"),
        ("a//b", "bad path component"),
        ("a/-b", "bad path component"),
        ("127.0.0.1:5000/", "no repository"),
        ("x/" + "a" * 300, "longer than"),
    ],
)
def test_malformed_references_name_the_field(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as caught:
        parse(text, field="services.db.image")
    assert caught.value.details["field"] == "services.db.image"
    assert "services.db.image" in caught.value.message


def test_check_digest() -> None:
    assert check_digest(DIGEST) == DIGEST
    assert check_digest("sha512:" + "0" * 128)
    with pytest.raises(InvalidArgument, match="64 lowercase hex"):
        check_digest("sha256:" + "a" * 63 + "g" * 1 + "")
    with pytest.raises(InvalidArgument, match="layer digest"):
        check_digest("nope", "layer digest")
