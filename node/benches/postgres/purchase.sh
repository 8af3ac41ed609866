#!/usr/bin/env bash
# The PostgreSQL side of BENCHMARKS.md's purchase comparison (issue 16): a
# double-entry purchase as one PL/pgSQL call (idempotency check, balance
# check, two balance updates, a journal entry and two postings), measured
# with pgbench at default durability (fsync on, synchronous_commit on) on a
# throwaway cluster reached only through a Unix socket in a temporary
# directory.
#
#   bash node/benches/postgres/purchase.sh [PAST_PURCHASES] [SECONDS] [CLIENTS...]
#   bash node/benches/postgres/purchase.sh 500000 20 1 64 256
#
# Needs PostgreSQL 15 (apt-get install postgresql-15); run as root (the
# cluster runs as the postgres user) or as any user that may run initdb.
set -euo pipefail
past=${1:-500000}
secs=${2:-20}
if [ $# -ge 2 ]; then shift 2; else shift $#; fi
clients=("$@")
[ ${#clients[@]} -eq 0 ] && clients=(1 64 256)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ] || [ ! -x "$bin/pgbench" ]; then
  echo "PostgreSQL not found: apt-get install postgresql-15" >&2
  exit 2
fi
dir=$(mktemp -d /tmp/caisse-pgbench.XXXXXX)
as=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$dir"
  as=(runuser -u postgres --)
fi
cleanup() {
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
"${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U bench >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
  -o "-c listen_addresses='' -k $dir -c max_connections=600 -c shared_buffers=512MB" >/dev/null
psql() { "${as[@]}" "$bin/psql" -h "$dir" -U bench -d postgres -v ON_ERROR_STOP=1 -q "$@"; }
psql <<SQL
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE journal (seq bigserial PRIMARY KEY, purchase uuid NOT NULL, member bigint NOT NULL,
  outlet bigint NOT NULL, amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE postings (seq bigint NOT NULL REFERENCES journal, account bigint NOT NULL, amount bigint NOT NULL);
CREATE TABLE purchases (id uuid PRIMARY KEY, seq bigint NOT NULL, content bytea NOT NULL);
-- 100,000 members with EUR 1,000,000 each (never short), 100 outlets.
INSERT INTO accounts SELECT g, 100000000 FROM generate_series(1, 100000) g;
INSERT INTO accounts SELECT 1000000 + g, 0 FROM generate_series(1, 100) g;
CREATE FUNCTION purchase(p uuid, m bigint, o bigint, amt bigint) RETURNS bigint AS \$\$
DECLARE s bigint; h bytea := sha256(convert_to(m || '/' || o || '/' || amt, 'UTF8'));
BEGIN
  SELECT seq INTO s FROM purchases WHERE id = p;
  IF FOUND THEN RETURN s; END IF;
  UPDATE accounts SET balance = balance - amt WHERE id = m AND balance >= amt;
  IF NOT FOUND THEN RAISE EXCEPTION 'insufficient balance'; END IF;
  UPDATE accounts SET balance = balance + amt WHERE id = 1000000 + o;
  INSERT INTO journal (purchase, member, outlet, amount) VALUES (p, m, o, amt) RETURNING seq INTO s;
  INSERT INTO postings VALUES (s, m, -amt), (s, 1000000 + o, amt);
  INSERT INTO purchases VALUES (p, s, h);
  RETURN s;
END \$\$ LANGUAGE plpgsql;
SQL
echo "preloading $past past purchases..." >&2
# In transactions of 10,000: one transaction of 500,000 updates the same
# 100 outlet rows 5,000 times each, and each update walks the row's chain
# of versions (it ran for more than 20 minutes).
for ((from = 1; from <= past; from += 10000)); do
  to=$((from + 9999 < past ? from + 9999 : past))
  psql -c "SELECT count(purchase(gen_random_uuid(), 1 + (g % 100000), 1 + (g % 100), 1)) FROM generate_series($from, $to) g" >/dev/null
done
psql -c "VACUUM ANALYZE" >/dev/null
cat >"$dir/purchase.sql" <<'SQL'
\set m random(1, 100000)
\set o random(1, 100)
SELECT purchase(gen_random_uuid(), :m, :o, 1);
SQL
chmod a+r "$dir/purchase.sql"
size=$(psql -At -c "SELECT pg_database_size('postgres')")
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}'), $past past purchases, database $((size / 1048576)) MiB"
for c in "${clients[@]}"; do
  tps=$("${as[@]}" "$bin/pgbench" -h "$dir" -U bench -n -c "$c" -j 2 -T "$secs" -f "$dir/purchase.sql" postgres 2>/dev/null |
    awk '/^tps/ {print int($3)}')
  echo "postgres purchases, $c clients: $tps /s"
done
