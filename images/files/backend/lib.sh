# Shared by the CGI scripts: responses and SQL through psql.
# psql reads DATABASE_URL when it is set, else the PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE variables.

respond() {
  # respond STATUS CONTENT-TYPE BODY: a complete HTTP/1.1 response with its length.
  body="$3
"
  length="$(printf '%s' "$body" | wc -c)"
  printf 'HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %s\r\nConnection: close\r\n\r\n' \
    "$1" "$2" "$length"
  [ "$REQUEST_METHOD" = "HEAD" ] || printf '%s' "$body"
}

sql() {
  # sql [psql -v options...] < statement: one tuples-only result; error text on stderr.
  if [ -n "${DATABASE_URL:-}" ]; then
    psql "$DATABASE_URL" -X -q -t -A -v ON_ERROR_STOP=1 "$@"
  else
    psql -X -q -t -A -v ON_ERROR_STOP=1 "$@"
  fi
}

query_param() {
  # query_param NAME: the URL-decoded value of NAME in the query string or a form body.
  for pair in $(echo "$QUERY_STRING&$REQUEST_BODY" | tr '&' ' '); do
    case "$pair" in
      "$1="*) httpd -d "${pair#*=}"; return 0 ;;
    esac
  done
  return 1
}

first_line() {
  head -n 1 | tr -d '\r"\\'
}

# The items table, made on first use: sent ahead of a request's own statements, in the same
# psql session (one connection per request, not one more for the table).
TABLE_SQL="SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY,
  value text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());"
