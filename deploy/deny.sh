#!/usr/bin/env bash
# cargo deny check: known vulnerabilities (RustSec), licences, banned crates (one TLS
# stack: no OpenSSL, no native TLS, no second crypto provider) and sources, as deny.toml
# says. cargo-deny is installed once, at a pinned version, into ./.tools (git-ignored).
#
# The advisory database is fetched from GitHub. On a machine that cannot reach GitHub
# (only the package registries), the copy already under ~/.cargo/advisory-dbs is used
# and its date is printed; with no copy at all, the advisories check is reported as not
# run, and the other checks still decide.
set -euo pipefail
cd "$(dirname "$0")/.."

deny=$(deploy/cargo-tool.sh cargo-deny 0.20.2)

"$deny" --log-level error check licenses bans sources

if "$deny" --log-level error check advisories 2>/tmp/printworks-deny.$$; then
  rm -f /tmp/printworks-deny.$$
  exit 0
fi
if ! grep -q "failed to fetch advisory database" /tmp/printworks-deny.$$; then
  cat /tmp/printworks-deny.$$ >&2
  rm -f /tmp/printworks-deny.$$
  exit 1
fi
rm -f /tmp/printworks-deny.$$
db=$(ls -d "$HOME"/.cargo/advisory-dbs/advisory-db-* 2>/dev/null | head -n 1 || true)
if [ -z "$db" ]; then
  printf 'deny: the advisory database cannot be fetched and no copy is here: advisories NOT checked\n' >&2
  exit 0
fi
printf 'deny: the advisory database cannot be fetched; checking against the local copy of %s\n' \
  "$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo 'unknown date')" >&2
"$deny" --log-level error --offline check advisories
