#!/bin/sh
# Initialise the cluster on first start (an empty volume), then supervise the
# postmaster as a database host's init system would (systemd's Restart=always with
# RestartSec): if the postmaster dies while the container lives, start it again after
# POSTGRES_RESTART_DELAY_S seconds. The container, its address and its name stay up
# meanwhile, so clients meet refused connections, as with a real database host.
# Killing this supervisor (the container's main process) is a crash of the whole
# container, which Docker's restart policy answers.
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
# Time WAL writes and syncs (pg_stat_wal): what commit latency is made of.
track_wal_io_timing = on
CONF
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_postgres postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE ROLE "$POSTGRES_USER" LOGIN PASSWORD '$POSTGRES_PASSWORD';
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
SQL
fi

# pg_stat_statements: per-statement counters in shared memory, current at once (the
# cumulative statistics of pg_stat_database reach it up to 10 s late from a backend
# that went idle, PGSTAT_IDLE_INTERVAL). Created once per cluster, old volumes too.
if [ ! -e "$PGDATA/.statements-extension" ]; then
  as_postgres postgres --single -D "$PGDATA" "$POSTGRES_DB" >/dev/null <<SQL
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
  touch "$PGDATA/.statements-extension"
fi

delay=${POSTGRES_RESTART_DELAY_S:-3}
child=""
stopping=""
# docker stop: stop supervising and shut the postmaster down fast (SIGINT: roll back
# open transactions, disconnect clients, checkpoint). SIGTERM would be PostgreSQL's
# "smart" shutdown, which waits for every client to leave, until Docker's SIGKILL.
trap 'stopping=1; [ -n "$child" ] && kill -INT "$child" 2>/dev/null' TERM INT

while :; do
  setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" \
    -c shared_preload_libraries=pg_stat_statements "$@" &
  child=$!
  status=0
  wait "$child" || status=$?
  # A trapped signal interrupts wait: wait again for the postmaster to finish.
  while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
  [ -n "$stopping" ] && exit 0
  echo "postgres-entrypoint: the postmaster exited ($status); restarting it in ${delay} s"
  sleep "$delay" &
  wait $! || true
  [ -n "$stopping" ] && exit 0
done
