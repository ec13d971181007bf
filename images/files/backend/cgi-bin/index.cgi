#!/bin/sh
# A greeting with data read from PostgreSQL, so one request proves the backend reaches the database.
# "served_by" is the container's hostname, so a client can tell the replicas of a service apart.
. /app/lib.sh
host="$(cat /proc/sys/kernel/hostname 2>/dev/null)"
if out="$( { echo "$TABLE_SQL"; echo "SELECT json_build_object('message', 'hello from the backend',
      'database', version(), 'items', (SELECT count(*) FROM items), 'served_by', :'served_by');"; } \
      | sql -v served_by="$host" 2>&1)"; then
  respond "200 OK" application/json "$out"
else
  respond "503 Service Unavailable" application/json \
    "{\"error\": \"database unavailable: $(echo "$out" | first_line)\", \"served_by\": \"$host\"}"
fi
