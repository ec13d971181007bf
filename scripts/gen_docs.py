"""Generate docs/api.md, the API reference, from the comments of proto/scheduler/v1/scheduler.proto.

protoc parses the file with its source info, so every comment comes from the .proto itself; the
grpcurl example and the error codes of each RPC come from ``RPCS`` below. Any service, RPC,
message, field, enum or enum value without a comment, and any RPC without an entry in ``RPCS``,
is an error: the reference never silently misses a part of the API.

    python scripts/gen_docs.py            # write docs/api.md
    python scripts/gen_docs.py --check    # fail if docs/api.md is stale or anything is undocumented
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "scheduler/v1/scheduler.proto"
OUT = ROOT / "docs" / "api.md"
ADDRESS = "127.0.0.1:50051"
SOURCES = ROOT / "src" / "scheduler"

# Field numbers in descriptor.proto, for SourceCodeInfo paths.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM, _VALUE, _METHOD = 2, 3, 4, 2, 2


@dataclass(frozen=True)
class Rpc:
    """What the reference says of one RPC beyond its comment."""

    example: dict[str, object]
    errors: tuple[tuple[str, str], ...]
    """(gRPC code, when) pairs; every RPC may also answer UNAVAILABLE and INTERNAL."""


RPCS: dict[str, Rpc] = {
    "CreateEnvironment": Rpc(
        {"name": "demo", "spec": {"stack": "web-postgres"}},
        (
            ("INVALID_ARGUMENT", "a bad name, an unknown stack, service or parameter, a value out of bounds"),
            ("ALREADY_EXISTS", "the name is taken (or the request_id created another environment)"),
            ("RESOURCE_EXHAUSTED", "a quota (limits.env_max_*, limits.max_environments) would be exceeded; named"),
        ),
    ),
    "CloneEnvironment": Rpc(
        {"source": "staging", "name": "pr-42", "spec": {"labels": {"pr": "42"}}, "updateMask": "labels.pr"},
        (
            ("INVALID_ARGUMENT", "a bad source or name, a bad update_mask path, a stack change"),
            ("NOT_FOUND", "the source does not exist (named)"),
            ("ALREADY_EXISTS", "the name is taken (or the request_id created another environment)"),
            (
                "FAILED_PRECONDITION",
                "the source is neither RUNNING nor asleep with its latest generation (SOURCE_NOT_RUNNING); "
                "in a fleet, another node runs the source (WRONG_NODE: ask that node)",
            ),
            ("PERMISSION_DENIED", "the caller's scope covers the source or the new name and labels, not both"),
            (
                "RESOURCE_EXHAUSTED",
                "a quota (limits.env_max_*, limits.max_environments) would be exceeded; in a fleet, the "
                "source's node has no room for the copy; named",
            ),
        ),
    ),
    "GetEnvironment": Rpc(
        {"name": "demo"},
        (("INVALID_ARGUMENT", "an empty name"), ("NOT_FOUND", "no environment has that name")),
    ),
    "UpdateEnvironment": Rpc(
        {
            "name": "demo",
            "spec": {"services": {"backend": {"env": {"LOG_LEVEL": "debug"}}}},
            "updateMask": "services.backend.env",
        },
        (
            ("INVALID_ARGUMENT", "a bad update_mask path, a stack change, an invalid resulting spec"),
            ("NOT_FOUND", "no environment has that name"),
            ("FAILED_PRECONDITION", "the environment is pending, deploying or being deleted"),
            ("ABORTED", "etag is stale (reason ETAG_MISMATCH), or another update landed meanwhile"),
            ("RESOURCE_EXHAUSTED", "the resulting spec exceeds a per-environment quota (limits.env_max_*); named"),
        ),
    ),
    "DeleteEnvironment": Rpc(
        {"name": "demo"},
        (
            ("NOT_FOUND", "no environment has that name"),
            ("ABORTED", "etag is stale (reason ETAG_MISMATCH)"),
        ),
    ),
    "StopEnvironment": Rpc(
        {"name": "demo"},
        (
            ("NOT_FOUND", "no environment has that name"),
            ("FAILED_PRECONDITION", "the environment is deploying, updating or being deleted"),
            ("ABORTED", "etag is stale (reason ETAG_MISMATCH)"),
            ("PERMISSION_DENIED", "the caller is not an operator of the environment"),
        ),
    ),
    "StartEnvironment": Rpc(
        {"name": "demo"},
        (
            ("NOT_FOUND", "no environment has that name"),
            ("FAILED_PRECONDITION", "the environment is being deleted"),
            ("ABORTED", "etag is stale (reason ETAG_MISMATCH)"),
            ("PERMISSION_DENIED", "the caller is not an operator of the environment"),
        ),
    ),
    "ListEnvironments": Rpc(
        {"filter": "status=RUNNING,DEGRADED labels.team=web"},
        (("INVALID_ARGUMENT", "a filter that does not parse, a page_token not issued by the daemon"),),
    ),
    "GetEnvironmentLogs": Rpc(
        {"name": "demo", "services": ["backend"], "tail": 20},
        (
            ("INVALID_ARGUMENT", "a service the environment does not have"),
            ("NOT_FOUND", "no environment has that name"),
        ),
    ),
    "GetEnvironmentMetrics": Rpc({"name": "demo"}, (("NOT_FOUND", "no environment has that name"),)),
    "ListStacks": Rpc({}, (("INVALID_ARGUMENT", "a page_token not issued by the daemon"),)),
    "WatchEvents": Rpc(
        {"name": "demo", "since": "42"},
        (
            ("INVALID_ARGUMENT", "a heartbeat_interval under 1s"),
            ("OUT_OF_RANGE", "since is older than the event log (EVENTS_EXPIRED) or newer than its end"),
        ),
    ),
    "GetEnvironmentHistory": Rpc(
        {"name": "demo"},
        (
            ("NOT_FOUND", "no environment of that name ever existed"),
            ("INVALID_ARGUMENT", "a page_token issued for another environment or not at all"),
        ),
    ),
    "BackupEnvironment": Rpc(
        {"name": "demo"},
        (
            ("NOT_FOUND", "no environment of that name"),
            (
                "FAILED_PRECONDITION",
                "a PostgreSQL service has no running container to dump from, or pg_dump failed; in a fleet, "
                "another node runs it (WRONG_NODE: ask that node)",
            ),
            ("PERMISSION_DENIED", "the caller is not an admin"),
        ),
    ),
    "ListBackups": Rpc(
        {"name": "demo"},
        (("PERMISSION_DENIED", "the caller is not an admin"),),
    ),
    "RestoreEnvironment": Rpc(
        {"backup": "demo/demo-20260101T120000Z.tar", "name": "demo-copy"},
        (
            ("INVALID_ARGUMENT", "a malformed backup id or name, or an archive whose checksums do not match"),
            ("NOT_FOUND", "no such archive"),
            ("ALREADY_EXISTS", "an environment of that name exists"),
            ("FAILED_PRECONDITION", "the restored environment did not come up, or a database dump did not load"),
            ("RESOURCE_EXHAUSTED", "in a fleet, the node asked (where it is restored) cannot take it; named"),
        ),
    ),
    "ListOperations": Rpc(
        {"name": "demo"},
        (("INVALID_ARGUMENT", "an empty or malformed name"),),
    ),
    "ListTemplates": Rpc(
        {},
        (("PERMISSION_DENIED", "the caller is not an admin"),),
    ),
    "ReloadConfiguration": Rpc(
        {},
        (
            ("FAILED_PRECONDITION", "the configuration file does not validate; nothing changed"),
            ("PERMISSION_DENIED", "the caller is not an admin"),
        ),
    ),
    "ListNodes": Rpc({}, (("UNAVAILABLE", "etcd cannot be reached (in a fleet)"),)),
    "DrainNode": Rpc(
        {"node": "node-2"},
        (
            ("INVALID_ARGUMENT", "an empty node name"),
            ("NOT_FOUND", "no live node has that name"),
            ("FAILED_PRECONDITION", "the daemon runs alone (no cluster.etcd)"),
            ("PERMISSION_DENIED", "the caller is not an admin"),
        ),
    ),
    "UndrainNode": Rpc(
        {"node": "node-2"},
        (
            ("INVALID_ARGUMENT", "an empty node name"),
            ("NOT_FOUND", "no live node has that name"),
            ("FAILED_PRECONDITION", "the daemon runs alone (no cluster.etcd)"),
            ("PERMISSION_DENIED", "the caller is not an admin"),
        ),
    ),
}


SPECIFIC_REASONS: dict[str, str] = {
    "SOURCE_NOT_RUNNING": "CloneEnvironment: the source is neither RUNNING nor asleep with its latest generation",
    "ETAG_MISMATCH": "the etag sent is not the environment's current one (metadata `etag` is)",
    "EVENTS_EXPIRED": "`since` is older than the event log reaches (metadata `oldest_sequence`)",
    "SEQUENCE_IN_FUTURE": "`since` is past the log's end, e.g. from another daemon (metadata `latest_sequence`)",
    "MISSING_PERMISSION": "the caller's role lacks the permission the method needs (metadata names it)",
    "WRONG_NODE": (
        "logs, metrics, a backup or a clone asked of a fleet node the environment does not run on "
        "(metadata `node`, `address`)"
    ),
    "FENCED": (
        "a write of a deposed fleet placement leader, refused by its election key "
        "(internal: the leader steps down; no RPC returns it)"
    ),
}
"""ErrorInfo reasons more specific than their class's, raised with ``reason=`` in src/scheduler."""


class Undocumented(Exception):
    """Parts of the API have no comment, or an RPC has no example."""


def load(root: Path = ROOT / "proto") -> descriptor_pb2.FileDescriptorProto:
    """Parse the public proto (under ``root``) with its comments."""
    bundled = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        args = [
            "protoc",
            f"-I{root}",
            f"-I{ROOT / 'proto'}",
            f"-I{bundled}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (api,) = [f for f in files.file if f.name == PROTO]
    return api


class Reference:
    """Builds the Markdown, collecting every element that lacks a comment."""

    def __init__(self, api: descriptor_pb2.FileDescriptorProto) -> None:
        self.api = api
        self.comments = {
            tuple(loc.path): (loc.leading_comments or loc.trailing_comments).strip()
            for loc in api.source_code_info.location
        }
        self.missing: list[str] = []
        self.lines: list[str] = []

    def comment(self, path: tuple[int, ...], what: str) -> str:
        text = self.comments.get(path, "")
        if not text:
            self.missing.append(what)
        return " ".join(line.strip() for line in text.splitlines())

    def paragraphs(self, path: tuple[int, ...], what: str) -> str:
        text = self.comments.get(path, "")
        if not text:
            self.missing.append(what)
        blocks = [" ".join(line.strip() for line in block.splitlines()) for block in text.split("\n\n")]
        return "\n\n".join(blocks)

    def render(self) -> str:
        package = self.api.package
        self.lines += [
            "# API reference: `scheduler.v1`",
            "",
            "Generated by `make docs` from the comments of `proto/scheduler/v1/scheduler.proto`; do not edit.",
            f"Examples call a daemon listening on `{ADDRESS}` without TLS with `grpcurl` (`.venv/bin/grpcurl`);",
            "JSON field names may be written as in the .proto or in lowerCamelCase.",
            "",
        ]
        for s_index, service in enumerate(self.api.service):
            self.lines += [f"## Service `{package}.{service.name}`", ""]
            self.lines += [self.paragraphs((_SERVICE, s_index), f"service {service.name}"), ""]
            for m_index, method in enumerate(service.method):
                self.method(service.name, (_SERVICE, s_index, _METHOD, m_index), method)
        self.errors()
        self.lines += ["## Messages", ""]
        for index, message in enumerate(self.api.message_type):
            self.message(message, (_MESSAGE, index), message.name)
        self.lines += ["## Enums", ""]
        for index, enum in enumerate(self.api.enum_type):
            self.enum(enum, (_ENUM, index), enum.name)
        return "\n".join(self.lines).rstrip() + "\n"

    def errors(self) -> None:
        from scheduler.api.interceptors import ERROR_DOMAIN, STATUS_OF

        self.lines += [
            "## Errors",
            "",
            f"Every error carries a `google.rpc.ErrorInfo` with domain `{ERROR_DOMAIN}`, a reason, and",
            "metadata naming what it concerns (`environment`, `service`, `field`, `request_id`...).",
            "",
            "| Code | Default reason | RetryInfo |",
            "| --- | --- | --- |",
        ]
        for mapping in STATUS_OF.values():
            retry = f"{mapping.retry_after:g}s" if mapping.retry_after is not None else "no"
            self.lines.append(f"| `{mapping.code.name}` | `{mapping.reason}` | {retry} |")
        self.lines += ["", "More specific reasons:", "", "| Reason | When |", "| --- | --- |"]
        code = "".join(path.read_text() for path in SOURCES.rglob("*.py"))
        raised = sorted(
            {r for arg in re.findall(r"reason=([^,\n]+)", code) for r in re.findall(r'"([A-Z][A-Z_]+)"', arg)}
        )
        for reason in raised:
            if reason not in SPECIFIC_REASONS:
                self.missing.append(f"error reason {reason}: not in scripts/gen_docs.py SPECIFIC_REASONS")
            self.lines.append(f"| `{reason}` | {SPECIFIC_REASONS.get(reason, '')} |")
        self.lines.append("")

    def method(self, service: str, path: tuple[int, ...], method: descriptor_pb2.MethodDescriptorProto) -> None:
        request = method.input_type.rsplit(".", 1)[-1]
        response = method.output_type.rsplit(".", 1)[-1]
        stream = "stream " if method.server_streaming else ""
        self.lines += [
            f"### `{method.name}`",
            "",
            f"`{method.name}(`[`{request}`](#{request.lower()})`) returns "
            f"(`{stream}[`{response}`](#{response.lower()})`)`",
            "",
            self.paragraphs(path, f"rpc {method.name}"),
            "",
        ]
        rpc = RPCS.get(method.name)
        if rpc is None:
            self.missing.append(f"rpc {method.name}: no example in scripts/gen_docs.py RPCS")
            return
        data = f" -d '{json.dumps(rpc.example)}'" if rpc.example else ""
        self.lines += [
            "```sh",
            f"grpcurl -plaintext{data} \\",
            f"  {ADDRESS} {self.api.package}.{service}/{method.name}",
            "```",
            "",
            "| Error | When |",
            "| --- | --- |",
            *[f"| `{code}` | {when} |" for code, when in rpc.errors],
            "",
        ]

    def message(self, message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str) -> None:
        if message.options.map_entry:
            return
        self.lines += [f"### `{name}`", "", self.paragraphs(path, f"message {name}"), ""]
        if message.field:
            self.lines += ["| Field | Type | Description |", "| --- | --- | --- |"]
            for index, field in enumerate(message.field):
                text = self.comment((*path, _FIELD, index), f"field {name}.{field.name}").replace("|", "\\|")
                self.lines.append(f"| `{field.name}` | {self.type_of(message, field)} | {text} |")
            self.lines.append("")
        for index, nested in enumerate(message.nested_type):
            self.message(nested, (*path, _NESTED, index), f"{name}.{nested.name}")
        for index, enum in enumerate(message.enum_type):
            self.enum(enum, (*path, _NESTED_ENUM, index), f"{name}.{enum.name}")

    def enum(self, enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str) -> None:
        self.lines += [f"### `{name}`", "", self.paragraphs(path, f"enum {name}"), ""]
        self.lines += ["| Value | Number | Description |", "| --- | --- | --- |"]
        for index, value in enumerate(enum.value):
            text = self.comment((*path, _VALUE, index), f"enum value {value.name}").replace("|", "\\|")
            self.lines.append(f"| `{value.name}` | {value.number} | {text} |")
        self.lines.append("")

    def type_of(self, message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> str:
        kind = descriptor_pb2.FieldDescriptorProto
        if field.type_name:
            short = field.type_name.rsplit(".", 1)[-1]
            entry = next((n for n in message.nested_type if n.name == short and n.options.map_entry), None)
            if entry is not None:
                key, value = entry.field
                return f"map<{self.type_of(entry, key)}, {self.type_of(entry, value)}>"
            own = field.type_name.startswith(f".{self.api.package}.")
            label = f"[`{short}`](#{short.lower()})" if own else f"`{field.type_name.lstrip('.')}`"
        else:
            label = f"`{kind.Type.Name(field.type).removeprefix('TYPE_').lower()}`"
        if field.label == kind.LABEL_REPEATED:
            return f"repeated {label}"
        return f"optional {label}" if field.proto3_optional else label


def generate(root: Path = ROOT / "proto") -> str:
    """The reference as Markdown, from the proto files under ``root``.

    Raises:
        Undocumented: naming every element without a comment and every RPC without an example.
    """
    reference = Reference(load(root))
    text = reference.render()
    if reference.missing:
        raise Undocumented("undocumented: " + "; ".join(reference.missing))
    return text


if __name__ == "__main__":
    try:
        text = generate()
    except Undocumented as err:
        raise SystemExit(str(err)) from None
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            raise SystemExit("docs/api.md is stale: run 'make docs'")
    else:
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(text)
