"""The shell scripts a PostgreSQL template, or a clone of a running one, needs, run inside the image (``/bin/sh``).

They follow the official image's contract (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD,
POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, PGDATA, ``/docker-entrypoint-initdb.d``) and
need of the image only ``/bin/sh``, ``sed``, the PostgreSQL binaries on ``PATH``, a ``postgres``
user and ``gosu`` or ``su`` (the official images and the project's own image have them).

- ``BUILD`` runs once per template, in a container of its own with no network: initdb with no
  password (the role has none, so the template holds no credential), the same
  ``listen_addresses`` and ``pg_hba.conf`` line the entrypoint would write, the database made in
  single-user mode (no server, no socket), and a marker file that says "first start of a copy".
- ``CLONE_PASSWORD`` wraps the entrypoint of a clone of a running environment (see
  ``orchestrator.clone``): on its first start (``CLONE_MARKER``) it sets the clone's own password
  in single-user mode, which first replays the copied WAL; init scripts do not run again.
- ``CLONE_INIT`` wraps the image's own entrypoint in each environment's container. On the first
  start of a copy (the marker is there) it sets the environment's password, in single-user mode
  or, when there are init scripts, through a server on the unix socket only (as the entrypoint
  does), runs ``/docker-entrypoint-initdb.d`` (``*.sql``, ``*.sql.gz``, ``*.sh``), removes the
  marker, and then ``exec``s the entrypoint, which finds an initialised directory and starts
  the server. Nothing can connect over TCP before the password is set. If anything fails the
  marker stays, the container exits non-zero, and the next start tries again.

Single-user mode runs with ``shared_buffers=1MB``: setting up the default 128 MB of buffers for
one statement cost about 10 ms of CPU. (Settings that pg_control records, such as
``max_connections``, are left alone: the server would then write and flush a parameter change
as it starts.) It keeps ``fsync`` on: on an overlay volume the files it changes were copied up
(and flushed) with the template's content, and the marker's removal is a whiteout the journal
commits within seconds, so unflushed pages could leave a copy with no password and no marker.
"""

from __future__ import annotations

MARKER = ".scheduler-first-start"
"""File in a template's data directory; its presence in a volume means "not initialised yet"."""
CLONE_MARKER = ".scheduler-clone-first-start"
"""File in a cloned data directory: its first start sets the clone's own password (``CLONE_PASSWORD``)."""
BUILD_MOUNT = "/scheduler-template/data"
"""Where a template build sees the directory it fills."""

_COMMON = r"""
set -eu
run_uid="$(id -u)"
as_postgres() {
  if [ "$run_uid" != 0 ]; then "$@"
  elif command -v gosu >/dev/null 2>&1; then gosu postgres "$@"
  else su -p -s /bin/sh -c 'exec "$0" "$@"' -- postgres "$@"
  fi
}
quote() { printf '%s' "$1" | sed "s/$2/$2$2/g"; }
newline='
'
single() {
  # Single-user mode answers errors on its output and still exits 0: look for them.
  out="$(as_postgres postgres --single -j -D "$PGDATA" -c listen_addresses='' \
          -c shared_buffers=1MB -c log_min_messages=warning postgres 2>&1 <<EOF
$1

EOF
)" || true
  case "$out" in
    *ERROR:*|*FATAL:*|*PANIC:*) printf '%s\n' "$out" >&2; return 1 ;;
  esac
}
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
cd /
"""

BUILD = (
    _COMMON
    + r"""
PGDATA="$SCHEDULER_TEMPLATE_DATA"
AUTH="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
# shellcheck disable=SC2086
as_postgres initdb -D "$PGDATA" --username="$POSTGRES_USER" --auth-local=trust --auth-host="$AUTH" \
  --encoding=UTF8 --locale="$SCHEDULER_TEMPLATE_LOCALE" --no-instructions --no-sync \
  ${POSTGRES_INITDB_ARGS:-} >/dev/null
printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
printf 'host all all all %s\n' "$AUTH" >> "$PGDATA/pg_hba.conf"
if [ "$POSTGRES_DB" != postgres ]; then
  single "CREATE DATABASE \"$(quote "$POSTGRES_DB" '"')\";"
fi
: > "$PGDATA/"""
    + MARKER
    + r""""
chown postgres:postgres "$PGDATA/"""
    + MARKER
    + r""""
"""
)

_PREPARE_DATA = r"""
  if [ "$run_uid" = 0 ]; then
    mkdir -p /var/run/postgresql
    chown postgres:postgres /var/run/postgresql "$PGDATA"
    chmod 3777 /var/run/postgresql
    chmod 700 "$PGDATA"
  fi
  # sed (a subshell and two processes) only for a value that holds the quote or a line break,
  # whose trailing line breaks the command substitution drops: others are their own quoting.
  case "$POSTGRES_USER" in
    *'"'*|*"$newline"*) role="\"$(quote "$POSTGRES_USER" '"')\"" ;;
    *) role="\"$POSTGRES_USER\"" ;;
  esac
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
  fi
  sql=""
  case "${POSTGRES_PASSWORD:-}" in
    "") ;;
    *"'"*|*"$newline"*) sql="ALTER ROLE $role PASSWORD '$(quote "$POSTGRES_PASSWORD" "'")';" ;;
    *) sql="ALTER ROLE $role PASSWORD '$POSTGRES_PASSWORD';" ;;
  esac
"""

CLONE_PASSWORD = (
    _COMMON
    + r"""
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
marker="$PGDATA/"""
    + CLONE_MARKER
    + r""""
if [ -f "$marker" ]; then"""
    + _PREPARE_DATA
    + r"""
  # Single-user mode first replays the WAL of the copy (taken while its source ran).
  if [ -n "$sql" ]; then single "$sql"; fi
  rm -f "$marker"
fi
exec "$@"
"""
)
"""Wraps the entrypoint of a clone's PostgreSQL: its own password is set before the server listens."""

CLONE_INIT = (
    _COMMON
    + r"""
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
marker="$PGDATA/"""
    + MARKER
    + r""""
if [ -f "$marker" ]; then"""
    + _PREPARE_DATA
    + r"""
  scripts=""
  if [ -d /docker-entrypoint-initdb.d ]; then
    # Globs first, with no process: the directory is most often empty.
    for entry in /docker-entrypoint-initdb.d/* /docker-entrypoint-initdb.d/.[!.]* /docker-entrypoint-initdb.d/..?*; do
      if [ -e "$entry" ] || [ -L "$entry" ]; then
        scripts="$(find /docker-entrypoint-initdb.d -maxdepth 1 -type f | sort)"
        break
      fi
    done
  fi
  if [ -z "$scripts" ]; then
    if [ -n "$sql" ]; then single "$sql"; fi
  else
    as_postgres pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses='' -p 5432" start
    if [ -n "$sql" ]; then
      printf '%s\n' "$sql" | as_postgres psql -X -q -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres
    fi
    for script in $scripts; do
      case "$script" in
        *.sql) as_postgres psql -X -q -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
                 --dbname="$POSTGRES_DB" -f "$script" ;;
        *.sql.gz) gunzip -c "$script" | as_postgres psql -X -q -v ON_ERROR_STOP=1 \
                    --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" ;;
        *.sh) . "$script" ;;
        *) echo "ignoring $script" >&2 ;;
      esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w -s stop
  fi
  rm -f "$marker"
fi
exec "$@"
"""
)
