#!/usr/bin/env bash
# Molly's one test command (the README's): installs and starts every real
# component the tests need, then runs every test in the workspace.
#
# Each scripts/setup/*.sh installs one component if it is missing (heavy
# builds are cached under ${MOLLY_CACHE:-~/.cache/molly}, outside the
# repository), starts it on loopback, and exports what the tests need to find
# it. They are sourced in name order so their exports reach cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
export MOLLY_CACHE="${MOLLY_CACHE:-$HOME/.cache/molly}"
mkdir -p "$MOLLY_CACHE"
for setup in scripts/setup/*.sh; do
  [ -e "$setup" ] || continue
  echo "== setup: $setup"
  # shellcheck source=/dev/null
  source "$setup"
done
echo "== cargo test (workspace)"
cargo test --workspace --all-targets --locked "$@"
echo "== doc tests"
cargo test --workspace --doc --locked "$@"
echo "== simulator with fault points and small transfer blocks (segments, eviction, cold reads)"
cargo test -p molly-shards --lib --features sim --locked "$@"
