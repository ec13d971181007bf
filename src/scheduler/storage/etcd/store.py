"""``EtcdStateStore``: the ``StateStore`` contract kept in etcd, for schedulers that share one state.

Keys under the store's prefix (names, uids, kinds and keys percent-encoded, so a ``/`` in them
cannot reach another key's range):

- ``env/<name>``: the environment's JSON document (the codec's, as in SQLite);
- ``uid/<uid>`` and ``request/<request id>``: the name holding that uid or create request,
  written and removed in the same transaction as the document (the unique indexes);
- ``history/<name>/<seq>`` with ``history-seq/<name>``: the audit trail, a counter per name
  bumped in the transaction that appends, the oldest entry beyond the bound dropped in it too;
- ``record/<kind>/<key>``: small JSON records (port and subnet claims).

Revisions: an environment's ``revision`` (the API's etag) is a counter inside its document,
1 at creation and +1 per write, so it means the same as in SQLite. The compare-and-swap is
etcd's: a write reads the document with its ``mod_revision`` and commits only if the key's
``mod_revision`` is unchanged, so two writers from one read cannot both land. Creation order,
which pages follow, is the key's etcd ``create_revision`` (unique and increasing).

Consistency: writes and the reads that precede a write are linearizable. Plain reads (get,
list, history, records, find_by_request_id) are linearizable while the cluster has a leader; when
it has none (an election after the leader died) they fall back, after ``read_deadline``, to a
serializable read of a live member's copy, which answers at once and may miss the last
writes acknowledged just before (never an unacknowledged one).
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any
from urllib.parse import quote, unquote

from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry
from scheduler.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from scheduler.storage import codec
from scheduler.storage.base import (
    HISTORY_LIMIT,
    Json,
    ListQuery,
    PageKey,
    created,
    iterate_pages,
    name_taken,
    not_found,
    record_held,
    record_text,
    request_taken,
    stale_write,
    uid_not_found,
    uid_taken,
    written,
)
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.types import Compare, Delete, Get, KeyValue, Put, RangePage

_ATTEMPTS = 64
"""Rounds a write retries after losing a race to another writer before it reports Unavailable."""


def _part(text: str) -> str:
    return quote(text, safe="")


class EtcdStateStore:
    """A ``StateStore`` in etcd under ``prefix``; several schedulers may share it."""

    def __init__(
        self, client: EtcdClient, prefix: str = "/scheduler/", *, owns_client: bool = False, read_deadline: float = 2.0
    ) -> None:
        self._client = client
        self._prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._owns_client = owns_client
        self._read_deadline = read_deadline
        self._closed = False
        self._fence: Compare | None = None
        self._fence_created = 0

    def fenced(self, key: str, created: int) -> EtcdStateStore:
        """This store, whose ``put`` lands only while ``key`` exists as created at revision ``created``.

        A placement leader writes through one fenced on its election key: once it is deposed
        (its key deleted, a successor's created), its writes fail with FailedPrecondition
        (reason ``FENCED``) in the same transaction that would have applied them.
        """
        store = EtcdStateStore(self._client, self._prefix, read_deadline=self._read_deadline)
        store._fence = Compare.created_at(key, created)
        store._fence_created = created
        return store

    # --- keys ----------------------------------------------------------------------------------

    def _env(self, name: str) -> str:
        return f"{self._prefix}env/{_part(name)}"

    def _uid(self, uid: str) -> str:
        return f"{self._prefix}uid/{_part(uid)}"

    def _request(self, request_id: str) -> str:
        return f"{self._prefix}request/{_part(request_id)}"

    def _history(self, name: str) -> str:
        return f"{self._prefix}history/{_part(name)}/"

    def _history_seq(self, name: str) -> str:
        return f"{self._prefix}history-seq/{_part(name)}"

    def _records(self, kind: str) -> str:
        return f"{self._prefix}record/{_part(kind)}/"

    # --- reads ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the state store is closed")

    async def _read(
        self,
        key: str,
        *,
        prefix: bool = False,
        start: str | None = None,
        limit: int = 0,
        revision: int = 0,
        by_creation: bool = False,
        min_create_revision: int = 0,
    ) -> RangePage:
        """A linearizable read, or a member's own copy when the cluster has had no leader for a while."""
        read = functools.partial(
            self._client.range,
            key,
            prefix=prefix,
            start=start,
            limit=limit,
            revision=revision,
            by_creation=by_creation,
            min_create_revision=min_create_revision,
        )
        try:
            return await read(attempt_timeout=self._read_deadline, retry_deadline=self._read_deadline)
        except (Unavailable, DeadlineExceeded):
            return await read(serializable=True)

    async def _scan(self, prefix: str) -> builtins.list[KeyValue]:
        """Every key under ``prefix`` in key order, paged, read at one revision."""
        found: builtins.list[KeyValue] = []
        start: str | None = None
        revision = 0
        while True:
            page = await self._read(prefix, prefix=True, limit=500, revision=revision, start=start)
            revision = page.revision
            found += page.kvs
            if not page.more or not page.kvs:
                return found
            start = page.kvs[-1].key + "\0"

    async def _read_one(self, key: str) -> KeyValue | None:
        page = await self._read(key)
        return page.kvs[0] if page.kvs else None

    # --- environments ---------------------------------------------------------------------------

    async def create(self, env: Environment) -> Environment:
        """Store a new environment at revision 1, with its uid and request id as unique indexes."""
        self._check_open()
        env, text = created(env)
        doc = text.encode()
        keys = [self._env(env.name), self._uid(env.uid)] + ([self._request(env.request_id)] if env.request_id else [])
        holder = env.name.encode()
        result = await self._client.txn(
            [Compare.absent(k) for k in keys],
            [Put(keys[0], doc)] + [Put(k, holder) for k in keys[1:]],
            [Get(k) for k in keys],
        )
        if result.succeeded:
            return env
        held = [r.kvs[0] if r.kvs else None for r in result.results]
        if result.ambiguous and held[0] is not None and held[0].value == doc:
            return env  # our own first attempt landed before its answer was lost
        if held[0] is not None:
            raise name_taken(env.name)
        if held[1] is not None:
            raise uid_taken(env, held[1].value.decode())
        other = held[2].value.decode() if len(held) > 2 and held[2] is not None else "another environment"
        raise request_taken(env.request_id, other)

    async def get(self, name: str) -> Environment:
        """Return the environment called ``name``."""
        self._check_open()
        kv = await self._read_one(self._env(name))
        if kv is None:
            raise not_found(name)
        return codec.environment_from_json(kv.value.decode())

    async def put(self, env: Environment, *, expected_revision: int) -> Environment:
        """Replace a stored environment, matched by name and uid, if still at ``expected_revision``."""
        self._check_open()
        key = self._env(env.name)
        new, text = written(env, expected_revision)
        doc = text.encode()
        for _ in range(_ATTEMPTS):
            kv = await self._client.get(key)
            stored = codec.environment_from_json(kv.value.decode()) if kv is not None else None
            if stored is None or stored.uid != env.uid:
                raise uid_not_found(env)
            assert kv is not None
            if stored.revision != expected_revision:
                raise stale_write(env, expected_revision, stored.revision)
            compares = [Compare.mod_revision(key, kv.mod_revision)]
            ops: list[Put | Delete] = [Put(key, doc)]
            if stored.request_id != new.request_id:
                if stored.request_id:
                    ops.append(Delete(self._request(stored.request_id)))
                if new.request_id:
                    compares.append(Compare.absent(self._request(new.request_id)))
                    ops.append(Put(self._request(new.request_id), new.name.encode()))
            failure = [Get(key)] + ([Get(self._request(new.request_id))] if new.request_id else [])
            if self._fence is not None:
                compares.append(self._fence)
                failure.append(Get(self._fence.key))
            result = await self._client.txn(compares, ops, failure)
            if result.succeeded:
                return new
            now = result.results[0].kvs[0] if result.results[0].kvs else None
            if result.ambiguous and now is not None and now.value == doc:
                return new
            self._check_fence(result.results[-1].kvs)
            if now is not None and now.mod_revision == kv.mod_revision and new.request_id:
                other = result.results[1].kvs[0].value.decode() if result.results[1].kvs else "another environment"
                raise request_taken(new.request_id, other)
            # Someone wrote in between: the next round reads it and reports the conflict.
        raise Unavailable(f"environment {env.name!r}: too many concurrent writes, try again")

    def _check_fence(self, held: tuple[KeyValue, ...]) -> None:
        if self._fence is None or (held and held[0].create_revision == self._fence_created):
            return
        raise FailedPrecondition(
            f"write refused: {self._fence.key} is no longer the one created at revision {self._fence_created} "
            "(deposed: another node leads now)",
            reason="FENCED",
            key=self._fence.key,
        )

    async def delete(self, name: str) -> None:
        """Remove an environment and its index keys if present; its history stays."""
        self._check_open()
        key = self._env(name)
        for _ in range(_ATTEMPTS):
            kv = await self._client.get(key)
            if kv is None:
                return
            stored = codec.environment_from_json(kv.value.decode())
            ops = [Delete(key), Delete(self._uid(stored.uid))]
            if stored.request_id:
                ops.append(Delete(self._request(stored.request_id)))
            result = await self._client.txn([Compare.mod_revision(key, kv.mod_revision)], ops)
            if result.succeeded:
                return
        raise Unavailable(f"environment {name!r}: too many concurrent writes, try again")

    async def list(
        self,
        page_size: int,
        page_token: str,
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Environment], str]:
        """Return one page of environments in creation order, and the next page's token."""
        self._check_open()
        query = ListQuery.of(page_size, page_token, statuses, labels)
        chunk = query.size + 1 if not query.statuses and not query.labels else max(query.size + 1, 200)
        # Filters look at the parsed JSON; only the page's environments are decoded in full.
        found: builtins.list[tuple[PageKey, Any]] = []
        min_create = query.after.seq if query.after is not None else 0
        revision = 0  # every chunk of one page is read at the first chunk's revision
        while len(found) <= query.size:
            page = await self._read(
                f"{self._prefix}env/",
                prefix=True,
                by_creation=True,
                min_create_revision=min_create,
                limit=chunk,
                revision=revision,
            )
            revision = page.revision
            for kv in page.kvs:
                data = json.loads(kv.value)
                position = PageKey(kv.create_revision, data["name"])
                if query.keeps(position, data.get("status"), data["spec"].get("labels") or {}):
                    found.append((position, data))
            if not page.more or not page.kvs:
                break
            min_create = page.kvs[-1].create_revision + 1
        kept, token = query.page(found)
        return [codec.decode(data, Environment) for data in kept], token

    def iterate(self, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[Environment]:
        """Yield every environment (in ``statuses``, if given) in creation order, a page at a time."""
        return iterate_pages(self, statuses)

    async def find_by_request_id(self, request_id: str) -> Environment | None:
        """Return the environment created by ``request_id``, if any."""
        self._check_open()
        if not request_id:
            return None
        holder = await self._read_one(self._request(request_id))
        if holder is None:
            return None
        kv = await self._read_one(self._env(holder.value.decode()))
        if kv is None:
            return None
        env = codec.environment_from_json(kv.value.decode())
        return env if env.request_id == request_id else None

    # --- history -------------------------------------------------------------------------------

    async def append_history(self, entry: HistoryEntry) -> None:
        """Record one change, dropping the oldest beyond the per-environment limit, in one transaction."""
        self._check_open()
        text = codec.history_to_json(entry).encode()
        counter = self._history_seq(entry.env)
        base = self._history(entry.env)
        for _ in range(_ATTEMPTS):
            kv = await self._client.get(counter)
            seq = (int(kv.value) if kv is not None else 0) + 1
            ops: list[Put | Delete] = [Put(counter, str(seq).encode()), Put(f"{base}{seq:020d}", text)]
            if seq > HISTORY_LIMIT:
                ops.append(Delete(base, end=f"{base}{seq - HISTORY_LIMIT + 1:020d}"))
            result = await self._client.txn(
                [Compare.mod_revision(counter, kv.mod_revision if kv is not None else 0)],
                ops,
                [Get(f"{base}{seq:020d}")],
            )
            if result.succeeded:
                return
            mine = result.results[0].kvs if result.results else ()
            if result.ambiguous and mine and mine[0].value == text:
                return
        raise Unavailable(f"history of {entry.env!r}: too many concurrent writes, try again")

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """Return the audit trail of ``name``, oldest first."""
        self._check_open()
        return [codec.history_from_json(kv.value.decode()) for kv in await self._scan(self._history(name))]

    # --- records -------------------------------------------------------------------------------

    async def put_record(self, kind: str, key: str, value: Json, *, exclusive: bool = False) -> None:
        """Store a small JSON record; ``exclusive`` claims the key only if nobody holds it."""
        self._check_open()
        text = record_text(kind, key, value).encode()
        path = self._records(kind) + _part(key)
        if not exclusive:
            await self._client.put(path, text)
            return
        result = await self._client.txn([Compare.absent(path)], [Put(path, text)], [Get(path)])
        held = result.results[0].kvs if result.results else ()
        if result.succeeded or (result.ambiguous and held and held[0].value == text):
            return
        raise record_held(kind, key)

    async def get_records(self, kind: str) -> dict[str, Json]:
        """Return every record of ``kind`` by key."""
        self._check_open()
        base = self._records(kind)
        found = {unquote(kv.key[len(base) :]): json.loads(kv.value) for kv in await self._scan(base)}
        return dict(sorted(found.items()))

    async def delete_record(self, kind: str, key: str) -> None:
        """Remove a record if present."""
        self._check_open()
        await self._client.delete(self._records(kind) + _part(key))

    async def close(self) -> None:
        """Refuse further calls; closes the client too when the store owns it."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.close()
