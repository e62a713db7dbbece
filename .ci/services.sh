#!/usr/bin/env bash
# Start the services the test suite talks to, if they are down, and wait until they answer.
# Today: PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`).
set -uo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if command -v pg_isready >/dev/null 2>&1 && ! pg_up; then
  echo "services: PostgreSQL is down, starting it"
  for version in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
fi
if command -v pg_isready >/dev/null 2>&1; then
  pg_up && echo "services: PostgreSQL is up" || echo "services: PostgreSQL did not start"
fi
exit 0
