#!/usr/bin/env bash
# Installs a cargo tool at a pinned version into ./.tools (git-ignored), once, and
# prints the path of its binary:
#
#   deploy/cargo-tool.sh <crate> <version>
set -euo pipefail
cd "$(dirname "$0")/.."

crate=$1
version=$2
tools=./.tools
bin=$tools/bin/$crate
if ! "$bin" --version 2>/dev/null | grep -qx "$crate $version"; then
  printf '%s: installing %s %s into %s (once)\n' "$crate" "$crate" "$version" "$tools" >&2
  cargo install --quiet --locked --root "$tools" "$crate" --version "$version" >&2
fi
printf '%s\n' "$bin"
