#!/bin/sh
# Initialise the cluster on first start (an empty volume), then run the postmaster as
# the container's main process (the only child of tini).
set -eu
: "${POSTGRES_DB:=exchange}" "${POSTGRES_USER:=exchange}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"

mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "postgres-entrypoint: initialising a new cluster in $PGDATA"
  as_postgres initdb --pgdata="$PGDATA" --username=postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
shared_buffers = 64MB
log_min_messages = warning
CONF
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_postgres postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE ROLE "$POSTGRES_USER" LOGIN PASSWORD '$POSTGRES_PASSWORD';
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
SQL
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
