"""Principals, roles and scopes, and asking the kernel for a loopback socket's owner."""

import hashlib
import os
import socket

import pytest

from scheduler import errors
from scheduler.api.auth import PERMISSIONS, ROLE_METHODS, Authenticator, in_scope, new_token, permission
from scheduler.api.loopback import loopback_owner
from scheduler.config import AuthSettings, RoleBinding, TokenSettings


def _settings(*bindings: RoleBinding, tokens: tuple[TokenSettings, ...] = ()) -> AuthSettings:
    return AuthSettings(bindings=list(bindings), tokens=list(tokens))


def test_roles_nest_and_every_rpc_has_a_permission() -> None:
    viewer, operator = ROLE_METHODS["viewer"], ROLE_METHODS["operator"]
    assert viewer is not None and operator is not None and viewer < operator
    assert "CreateEnvironment" not in viewer and "DeleteEnvironment" in operator
    from scheduler.api._gen.scheduler.v1 import scheduler_pb2

    methods = {m.name for m in scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].methods}
    assert methods == set(PERMISSIONS)
    assert operator <= methods
    assert permission("CreateEnvironment") == "environments.create"


def test_tokens_are_matched_by_hash_only() -> None:
    token, digest = new_token()
    assert token.startswith("sch_") and digest == hashlib.sha256(token.encode()).hexdigest()
    auth = Authenticator(_settings(tokens=(TokenSettings(name="ci", sha256=digest),)))
    assert auth.from_token(token).name == "token:ci"
    with pytest.raises(errors.Unauthenticated):
        auth.from_token(token + "x")
    with pytest.raises(errors.Unauthenticated):
        auth.from_token(digest)


def test_local_users_carry_their_groups() -> None:
    root = Authenticator.from_user(0, 0, pid=1)
    assert root.name == "user:root" and {"uid:0", "gid:0", "group:root"} <= root.ids and root.pid == 1
    nobody = Authenticator.from_user(987654, 987654)
    assert nobody.name == "uid:987654" and nobody.ids == {"uid:987654", "gid:987654"}


def test_grants_follow_bindings_and_scopes() -> None:
    team = RoleBinding(role="operator", principals=["group:root"], name_prefix="team-a-", labels={"team": "a"})
    auth = Authenticator(_settings(RoleBinding(role="viewer", principals=["uid:0"]), team))
    grant = auth.grant(Authenticator.from_user(0, 0))
    assert grant.allows("GetEnvironment") and grant.allows("DeleteEnvironment")
    assert not grant.allows("SomeDaemonWideCall")
    assert grant.roles() == "operator, viewer"
    assert in_scope(team, "team-a-x", {"team": "a"})
    assert not in_scope(team, "team-a-x", {"team": "b"}) and not in_scope(team, "team-b-x", {"team": "a"})
    assert not auth.grant(Authenticator.from_user(987654, 987654)).allows("GetEnvironment")


def test_a_binding_names_known_principal_kinds() -> None:
    with pytest.raises(ValueError, match="user:, uid:"):
        RoleBinding(role="viewer", principals=["root"])


def test_loopback_owner_reads_the_kernel_table() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            host, client_port = client.getsockname()
            assert loopback_owner(f"ipv4:{host}:{client_port}", port) == os.getuid()
            assert loopback_owner(f"ipv4:{host}:{client_port}", port + 1 if port < 65535 else 1) is None
    assert loopback_owner("ipv4:10.1.2.3:5000", 80) is None
    assert loopback_owner("unix:/x", 80) is None and loopback_owner("ipv6:[garbage]:1", 1) is None


def _client_as(uid: int, host: str, port: int) -> tuple[int, int, int]:
    """Fork a process that becomes ``uid`` and connects; its pid, its port, and a pipe to end it."""
    ports_r, ports_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(stop_w)
            os.close(ports_r)
            os.setgid(uid)
            os.setuid(uid)
            with socket.create_connection((host, port)) as client:
                os.write(ports_w, str(client.getsockname()[1]).encode())
                os.read(stop_r, 1)
        finally:
            os._exit(0)
    os.close(ports_w)
    os.close(stop_r)
    client_port = int(os.read(ports_r, 16) or b"0")
    os.close(ports_r)
    return pid, client_port, stop_w


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_owner_names_the_client_sockets_user_not_the_servers(host: str) -> None:
    """A client of another uid is named by its own uid; the server's end of it, by the server's."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another user")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen(1)
        port = server.getsockname()[1]
        pid, client_port, stop = _client_as(65534, host, port)
        try:
            assert client_port, "the client did not connect"
            server.settimeout(10)
            accepted, _ = server.accept()
            with accepted:
                kind = "ipv4" if family == socket.AF_INET else "ipv6"
                address = host if family == socket.AF_INET else f"[{host}]"
                assert loopback_owner(f"{kind}:{address}:{client_port}", port) == 65534
                assert loopback_owner(f"{kind}:{address}:{port}", client_port) == 0
        finally:
            os.close(stop)
            os.waitpid(pid, 0)


def test_a_killed_daemons_private_directory_is_swept() -> None:
    import tempfile
    from pathlib import Path

    from scheduler.api import peers

    # Above the kernel's largest pid (2**22): no process has it.
    dead = Path(tempfile.mkdtemp(prefix=f"{peers._PRIVATE_PREFIX}{2**22 + 7}-"))
    (dead / "grpc.sock").write_text("")
    alive = Path(tempfile.mkdtemp(prefix=f"{peers._PRIVATE_PREFIX}{os.getpid()}-"))
    try:
        peers._sweep_private_dirs()
        assert not dead.exists() and alive.exists()
    finally:
        alive.rmdir()
