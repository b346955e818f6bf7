#!/usr/bin/env bash
# The whole test suite, from a fresh machine: fetch the test models, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

FITBENCH_TEST_MODELS=$(scripts/fetch-test-models.sh | tail -n 1)
export FITBENCH_TEST_MODELS
cargo test --locked --all-targets "$@"
