#!/usr/bin/env bash
# Start the local PostgreSQL cluster (installed but maybe stopped) and create the test role.
set -euo pipefail
PG_VERSION="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if ! pg_lsclusters -h | grep -q "^${PG_VERSION} main"; then
  pg_createcluster "${PG_VERSION}" main >/dev/null
fi
if ! pg_lsclusters -h | grep "^${PG_VERSION} main" | grep -q online; then
  pg_ctlcluster "${PG_VERSION}" main start
fi
for i in $(seq 1 30); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
# the HA tests run three replicas of several processes each (serve --workers) on one server
if [ "$(su postgres -c "psql -qAtc 'show max_connections'")" -lt 400 ]; then
  su postgres -c "psql -qc 'alter system set max_connections = 400'" >/dev/null
  pg_ctlcluster "${PG_VERSION}" main restart
  for i in $(seq 1 30); do
    su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
  done
fi
su postgres -c "psql -qv ON_ERROR_STOP=1" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cairn') THEN
    CREATE ROLE cairn LOGIN SUPERUSER PASSWORD 'cairn';
  END IF;
END $$;
SQL
echo "PostgreSQL ${PG_VERSION} ready (role cairn)"
