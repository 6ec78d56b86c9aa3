#!/usr/bin/env bash
# What `make test` needs beyond Rust and PostgreSQL: Debian's headless Chromium and its
# WebDriver, for the tests of the pages people see. Installed with apt when missing and
# running as root (CI, containers); otherwise one line says what to install.
set -euo pipefail

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
