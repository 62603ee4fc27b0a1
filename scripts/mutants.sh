#!/usr/bin/env bash
# Mutation testing of src/ with cargo-mutants, within a 2-core machine's
# limits: only the suites that can catch a mutant in src/ run (not the
# browser, soak or leak runs, nor the doctests), the build skips debug info
# (linking is most of a mutant's time), and the run can be split in shards.
#
#   scripts/mutants.sh                 # everything (hours on 2 cores)
#   scripts/mutants.sh --shard 0/4     # one quarter; run k = 0..3
#   scripts/mutants.sh --in-diff d.diff  # only what a change touched
#   scripts/mutants.sh --iterate       # skip what an interrupted run caught
#
# Extra arguments go to cargo-mutants. Results land in mutants.out/
# (outcomes.json, caught.txt, missed.txt, timeout.txt, unviable.txt).
# Install the tool with `cargo install cargo-mutants`.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-mutants >/dev/null || {
  echo "cargo-mutants is missing: cargo install cargo-mutants" >&2
  exit 1
}

# Build and run only these targets (not the examples, nor the other tests).
targets=(-C=--lib -C=--test=it -C=--test=panic_hook -C=--test=events)

export CARGO_PROFILE_DEV_DEBUG=0
exec cargo mutants --all-features --jobs 1 --timeout 60 "${targets[@]}" "$@"
