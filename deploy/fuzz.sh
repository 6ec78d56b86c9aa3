#!/usr/bin/env bash
# Fuzzes the G-code checker against the second reading of its rules (fuzz/, cargo fuzz,
# libFuzzer with AddressSanitizer) for a bounded time:
#
#   deploy/fuzz.sh [seconds]    default 300; `make test` runs a short pass of 30
#
# cargo-fuzz is installed once, at a pinned version, into ./.tools (git-ignored). The
# sanitizer flags need a nightly compiler; the machine's stable one accepts them with
# RUSTC_BOOTSTRAP=1, for this build only. The committed corpus (fuzz/corpus/gcode) seeds
# each run; what a run finds goes to target/fuzz-corpus (git-ignored), and a crash is
# kept under fuzz/artifacts/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
fuzz=$(deploy/cargo-tool.sh cargo-fuzz 0.13.2)

work=target/fuzz-corpus
mkdir -p "$work"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=target/fuzz
printf 'fuzz: the G-code checker for %s s\n' "$seconds" >&2
"$fuzz" run --fuzz-dir fuzz gcode "$work" fuzz/corpus/gcode -- \
  -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 2>&1 |
  grep -E 'Done|stat::number_of_executed_units|stat::new_units_added|SUMMARY|panicked|ERROR' >&2
