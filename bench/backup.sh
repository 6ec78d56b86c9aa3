#!/usr/bin/env bash
# How long `printworks backup create` and `backup restore` take for a database of a
# given size: a fresh database on DATABASE_URL's server (or the embedded one), migrated,
# with ROWS rows of ~500 bytes in the e-mail outbox (default 500000, some 300 MB), backed
# up into a temporary folder and restored into a second fresh database. Release build.
#
#   cargo build --release --locked -p printworks && bench/backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${ROWS:-500000}
bin=target/release/printworks
url=${DATABASE_URL:-$(deploy/embedded-postgres.sh start)}
work=$(mktemp -d)
trap 'rm -rf "$work"; psql -q "$url" -c "DROP DATABASE IF EXISTS pw_bench_backup WITH (FORCE)" -c "DROP DATABASE IF EXISTS pw_bench_restore WITH (FORCE)" >/dev/null 2>&1' EXIT
psql -q "$url" -c "DROP DATABASE IF EXISTS pw_bench_backup WITH (FORCE)" -c "DROP DATABASE IF EXISTS pw_bench_restore WITH (FORCE)" \
  -c "CREATE DATABASE pw_bench_backup" -c "CREATE DATABASE pw_bench_restore" >/dev/null 2>&1
# The same server, another database (the URL may have no host part: a Unix socket).
db_url() {
  python3 -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(f"{p.scheme}://{p.netloc}/{sys.argv[2]}" + (f"?{p.query}" if p.query else ""))' "$url" "$1"
}
source_url=$(db_url pw_bench_backup)
target_url=$(db_url pw_bench_restore)
export PRINTWORKS_DATA_DIR=$work/data PRINTWORKS_LOG=warn
export PRINTWORKS_BACKUP_URL=file://$work/store/ PRINTWORKS_BACKUP_KEY=$(head -c 32 /dev/urandom | base64)
export PRINTWORKS_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
mkdir -p "$work/store"
DATABASE_URL=$source_url $bin migrate
psql -q "$source_url" -c "INSERT INTO email_outbox (id, to_address, subject, body, created_at, next_attempt_at, sent_at)
  SELECT gen_random_uuid(), 'person' || i || '@example.com', 'Subject ' || i, repeat(md5(i::text), 14), now(), now(), now()
  FROM generate_series(1, $rows) i" >/dev/null
size=$(psql -tAq "$source_url" -c "SELECT pg_database_size(current_database())")
t0=$(date +%s.%N)
DATABASE_URL=$source_url $bin backup create >"$work/created"
t1=$(date +%s.%N)
id=$(awk '{print $2}' "$work/created")
sealed=$(du -b "$work/store/backups/$id/data" | cut -f1)
DATABASE_URL=$target_url $bin backup restore "$id" >/dev/null
t2=$(date +%s.%N)
python3 - "$rows" "$size" "$sealed" "$t0" "$t1" "$t2" <<'PY'
import sys
rows, size, sealed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0, t1, t2 = map(float, sys.argv[4:7])
mb = 1e6
print(f"rows {rows}, database {size/mb:.0f} MB, backup {sealed/mb:.0f} MB sealed")
print(f"backup create:  {t1-t0:6.1f} s  ({sealed/mb/(t1-t0):.0f} MB/s of backup)")
print(f"backup restore: {t2-t1:6.1f} s  ({sealed/mb/(t2-t1):.0f} MB/s of backup; two reads, load, indexes, audit verify)")
PY
