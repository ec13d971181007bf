"""Real OCI registries on loopback for the pull tests (pytest plugin).

Session fixtures, each a Debian ``docker-registry serve`` with its own storage dir and a free port:
``registry`` (anonymous), ``auth_registry`` (htpasswd, bcrypt) and ``token_registry`` (bearer tokens
from ``TokenIssuer``, an HTTP server in the test process signing RS256 JWTs with an x5c certificate).
Images get in with ``Registry.push`` (``skopeo copy oci-archive:... docker://...``). Processes are
stopped by PID at teardown.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

REGISTRY_BINARY = "docker-registry"
STARTUP_TIMEOUT = 10.0


def require_tool(name: str) -> str:
    """Path of a system tool; skips the test when it is missing, fails under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run scripts/install-system.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- token issuer -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Issues registry bearer tokens (``auth.token`` in the registry config) over HTTP on loopback.

    ``users`` holds the accepted Basic credentials; ``anonymous_pull`` grants pull to callers without
    them. Every request is recorded in ``requests`` (path with query, and the user or ``""``).
    """

    service = "loopback-registry"
    issuer = "loopback-token-issuer"

    def __init__(self, workdir: Path, users: dict[str, str], anonymous_pull: bool = False) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.anonymous_pull = anonymous_pull
        self.requests: list[tuple[str, str]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self._server.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _grant(self, user: str, scopes: list[str]) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            allowed = wanted if user else [a for a in wanted if a == "pull" and self.anonymous_pull]
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
        return access

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _user(self) -> str | None:
                """The authenticated user, "" when anonymous, None when the credentials are wrong."""
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return ""
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return user if issuer.users.get(user) == password else None

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                user = self._user()
                issuer.requests.append((self.path, user or ""))
                if url.path != "/token":
                    self._reply(404, {"error": "not found"})
                    return
                if user is None:
                    self._reply(401, {"error": "wrong credentials"})
                    return
                query = parse_qs(url.query)
                if user == "" and not issuer.anonymous_pull:
                    self._reply(401, {"error": "authentication required"})
                    return
                token = issuer.sign(user, issuer._grant(user, query.get("scope", [])))
                self._reply(200, {"token": token, "access_token": token, "expires_in": 600})

            def do_POST(self) -> None:  # noqa: N802
                # Only the GET flow is offered, as by Docker Hub's older issuers; clients fall back.
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                issuer.requests.append((self.path, "POST"))
                self._reply(404, {"error": "use GET"})

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


# --- registry processes ---------------------------------------------------------------------------


@dataclass
class Registry:
    """A running ``docker-registry`` on 127.0.0.1."""

    host: str
    """``127.0.0.1:PORT``: the registry part of image references."""
    workdir: Path
    pid: int
    username: str = ""
    password: str = ""
    token_issuer: TokenIssuer | None = None
    _pushed: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def push(self, archive: Path, repo_tag: str) -> str:
        """Copy an OCI archive to ``repo_tag`` (``name:tag``); return the full reference."""
        key = (str(archive), repo_tag)
        if key in self._pushed:
            return self._pushed[key]
        skopeo = require_tool("skopeo")
        ref = f"{self.host}/{repo_tag}"
        cmd = [
            skopeo,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci-archive:{archive}",
            f"docker://{ref}",
        ]
        if self.username:
            cmd[2:2] = ["--dest-creds", f"{self.username}:{self.password}"]
        env = dict(os.environ, TMPDIR=str(self.workdir))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo push of {archive} to {ref} failed: {proc.stderr.strip()}")
        self._pushed[key] = ref
        return ref


def _start_registry(workdir: Path, auth: dict[str, object] | None) -> tuple[subprocess.Popen[bytes], str]:
    binary = require_tool(REGISTRY_BINARY)
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _attempt in range(3):
        port = free_port()
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        if auth:
            config["auth"] = auth
        # JSON is YAML: no YAML library needed to write the config.
        config_path = workdir / "config.yml"
        config_path.write_text(json.dumps(config))
        log = open(workdir / "registry.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    return proc, f"127.0.0.1:{port}"
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    return proc, f"127.0.0.1:{port}"
            except OSError:
                pass
            time.sleep(0.05)
        _stop(proc)
        last_error = (workdir / "registry.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start: {last_error}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry."""
    workdir = tmp_path_factory.mktemp("registry-anon")
    proc, host = _start_registry(workdir, None)
    try:
        yield Registry(host=host, workdir=workdir, pid=proc.pid)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with htpasswd (bcrypt) auth: user ``alice``, a random password."""
    htpasswd = require_tool("htpasswd")
    workdir = tmp_path_factory.mktemp("registry-htpasswd")
    password = secrets.token_urlsafe(12)
    subprocess.run(
        [htpasswd, "-B", "-b", "-c", str(workdir / "htpasswd"), "alice", password],
        check=True,
        capture_output=True,
        timeout=30,
    )
    proc, host = _start_registry(workdir, {"htpasswd": {"realm": "loopback", "path": str(workdir / "htpasswd")}})
    try:
        yield Registry(host=host, workdir=workdir, pid=proc.pid, username="alice", password=password)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with bearer-token auth; the issuer knows user ``bob`` and refuses anonymous pulls."""
    workdir = tmp_path_factory.mktemp("registry-token")
    password = secrets.token_urlsafe(12)
    issuer = TokenIssuer(workdir, {"bob": password})
    auth = {
        "token": {
            "realm": issuer.realm,
            "service": issuer.service,
            "issuer": issuer.issuer,
            "rootcertbundle": str(issuer.cert_path),
        }
    }
    try:
        proc, host = _start_registry(workdir, auth)
        try:
            yield Registry(
                host=host,
                workdir=workdir,
                pid=proc.pid,
                username="bob",
                password=password,
                token_issuer=issuer,
            )
        finally:
            _stop(proc)
    finally:
        issuer.close()
