#!/usr/bin/env bash
# Runs OctoPrint for the bridge tests: `serve.sh BASEDIR PORT WATCH_PID` serves the
# OctoPrint of .tools/octoprint-venv (make test-deps) on 127.0.0.1:PORT from BASEDIR,
# and stops it when the process WATCH_PID (the test binary, which shares one OctoPrint
# among its tests) has ended, or when this script gets SIGTERM.
set -uo pipefail
venv="$(dirname "$0")/../../.tools/octoprint-venv"
basedir=$1 port=$2 watch=$3
"$venv/bin/octoprint" serve --basedir "$basedir" --host 127.0.0.1 --port "$port" \
  --iknowwhatimdoing >>"$basedir/console.log" 2>&1 &
octoprint=$!
trap 'kill -TERM "$octoprint" 2>/dev/null; wait "$octoprint"; exit 0' TERM INT
while kill -0 "$watch" 2>/dev/null && kill -0 "$octoprint" 2>/dev/null; do
  sleep 0.5 &
  wait $!
done
kill -TERM "$octoprint" 2>/dev/null
wait "$octoprint"
kill -0 "$watch" 2>/dev/null || rm -rf "$basedir"
