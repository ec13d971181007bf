#!/bin/sh
# A greeting with data read from PostgreSQL, so one request proves the backend reaches the database.
. /app/lib.sh
if out="$( { ensure_table && echo "SELECT json_build_object('message', 'hello from the backend',
      'database', version(), 'items', (SELECT count(*) FROM items));" | sql; } 2>&1)"; then
  respond "200 OK" application/json "$out"
else
  respond "503 Service Unavailable" application/json \
    "{\"error\": \"database unavailable: $(echo "$out" | first_line)\"}"
fi
