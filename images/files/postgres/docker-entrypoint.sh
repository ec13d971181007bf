#!/bin/sh
# Follows the official postgres image: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA,
# POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD and /docker-entrypoint-initdb.d (*.sql, *.sh).
# The server ends up as PID 1 through exec, so it receives the stop signal (SIGINT: fast shutdown).
# busybox su parses options anywhere on its command line, hence the "--" before the user.
set -eu

if [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi

if [ "$1" != "postgres" ]; then
  exec "$@"
fi

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-}"
POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
export PGDATA

as_postgres() {
  su -p -s /bin/sh -c 'exec "$0" "$@"' -- postgres "$@"
}

if [ "$(id -u)" = "0" ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA" 2>/dev/null || true
  chown postgres:postgres "$PGDATA" 2>/dev/null || true
  chown postgres:postgres /var/run/postgresql
  chmod 3777 /var/run/postgresql
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != "trust" ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    echo "       set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust, which allows anyone in)" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile" 2>/dev/null || true
  # shellcheck disable=SC2086
  as_postgres initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
    --encoding=UTF8 --locale=C.UTF-8 --no-instructions ${POSTGRES_INITDB_ARGS:-} > /dev/null
  rm -f "$pwfile"
  printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

  scripts=""
  if [ -d /docker-entrypoint-initdb.d ]; then
    scripts="$(find /docker-entrypoint-initdb.d -maxdepth 1 -type f | sort)"
  fi
  if [ "$POSTGRES_DB" != "postgres" ] || [ -n "$scripts" ]; then
    # A server on the unix socket only: nothing outside can connect before initialisation is done.
    as_postgres pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses='' -p 5432" start
    if [ "$POSTGRES_DB" != "postgres" ]; then
      echo "CREATE DATABASE :\"db\";" | as_postgres psql -X -q -v ON_ERROR_STOP=1 \
        --username="$POSTGRES_USER" --dbname=postgres -v db="$POSTGRES_DB"
    fi
    for script in $scripts; do
      case "$script" in
        *.sql) as_postgres psql -X -q -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
                 --dbname="$POSTGRES_DB" -f "$script" ;;
        *.sh) . "$script" ;;
        *) echo "ignoring $script" >&2 ;;
      esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w -s stop
  fi
  echo "PostgreSQL init process complete; ready for start up." >&2
fi

if [ "$(id -u)" = "0" ]; then
  exec su -p -s /bin/sh -c 'exec "$0" "$@"' -- postgres "$@"
fi
exec "$@"
