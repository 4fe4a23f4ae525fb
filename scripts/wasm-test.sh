#!/usr/bin/env bash
# Runs tollgate-core's tests compiled to wasm32-unknown-unknown under Node, with
# wasm-bindgen-test-runner of exactly the wasm-bindgen version in Cargo.lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

command -v node >/dev/null || { echo "wasm-test: node is required (Node 18+)" >&2; exit 1; }

# Writes Cargo.lock if it does not exist yet.
cargo metadata --format-version 1 >/dev/null

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [[ -z "$version" ]]; then
  echo "wasm-test: wasm-bindgen not found in Cargo.lock" >&2
  exit 1
fi

installed=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{ print $2 }' || true)
if [[ "$installed" != "$version" ]]; then
  echo "wasm-test: installing wasm-bindgen-cli $version (found: ${installed:-none})" >&2
  cargo install wasm-bindgen-cli --version "$version" \
    || cargo install wasm-bindgen-cli --version "$version" --locked
fi

CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p tollgate-core --target wasm32-unknown-unknown "$@"
