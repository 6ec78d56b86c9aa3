#!/usr/bin/env bash
# What `make test` needs beyond Rust and PostgreSQL: Debian's headless Chromium and its
# WebDriver, for the tests of the pages people see, installed with apt when missing and
# running as root (CI, containers; otherwise one line says what to install); and the
# OpenID provider the federation tests sign in at (Node's oidc-provider, pinned by
# tests/idp/package-lock.json), installed with `npm ci` into tests/idp/node_modules;
# and OctoPrint with its virtual printer, which the bridge tests drive (every package
# pinned in deploy/octoprint-requirements.txt), in a virtualenv at .tools/octoprint-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.tools/octoprint-venv
requirements=deploy/octoprint-requirements.txt
if ! cmp -s "$requirements" "$venv/.installed"; then
  printf 'test-deps: installing OctoPrint (%s) into %s (once)\n' "$requirements" "$venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >/dev/null
  cp "$requirements" "$venv/.installed"
fi

idp=tests/idp
if ! command -v node >/dev/null 2>&1; then
  printf 'test-deps: the federation tests need Node.js 20 or later with npm\n' >&2
  exit 1
fi
# Installed again only when the lock file changed since the last install.
if ! cmp -s "$idp/package-lock.json" "$idp/node_modules/.package-lock.json.installed" 2>/dev/null; then
  (cd "$idp" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$idp/package-lock.json" "$idp/node_modules/.package-lock.json.installed"
fi

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  printf 'test-deps: installing %s\n' "${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
else
  printf 'test-deps: the browser tests need Debian'"'"'s %s: sudo apt-get install %s\n' "${need[*]}" "${need[*]}" >&2
  exit 1
fi
