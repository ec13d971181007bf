#!/bin/sh
# 200 "ok" when the database answers SELECT 1; else 503 with the reason.
. /app/lib.sh
if out="$(echo 'SELECT 1;' | sql 2>&1)" && [ "$out" = "1" ]; then
  respond "200 OK" text/plain ok
else
  respond "503 Service Unavailable" text/plain "database unavailable: $(echo "$out" | first_line)"
fi
