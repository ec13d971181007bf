#!/bin/sh
# GET /items lists the rows as JSON; POST /items?value=X (or GET /items/add?value=X) adds one.
. /app/lib.sh
adding=0
case "$REQUEST_METHOD $PATH_INFO" in
  "POST "*|"GET /items/add") adding=1 ;;
esac
if [ "$adding" = 1 ]; then
  if ! value="$(query_param value)"; then
    respond "400 Bad Request" application/json '{"error": "missing parameter: value"}'
    exit 0
  fi
  if out="$( { echo "$TABLE_SQL"; echo "INSERT INTO items (value) VALUES (:'value')
        RETURNING json_build_object('id', id, 'value', value);"; } | sql -v value="$value" 2>&1)"; then
    respond "201 Created" application/json "$out"
  else
    respond "503 Service Unavailable" application/json \
      "{\"error\": \"database unavailable: $(echo "$out" | first_line)\"}"
  fi
  exit 0
fi
if out="$( { echo "$TABLE_SQL"; echo "SELECT coalesce(json_agg(json_build_object('id', id, 'value', value)
      ORDER BY id), '[]') FROM items;"; } | sql 2>&1)"; then
  respond "200 OK" application/json "$out"
else
  respond "503 Service Unavailable" application/json \
    "{\"error\": \"database unavailable: $(echo "$out" | first_line)\"}"
fi
