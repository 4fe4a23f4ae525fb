#!/usr/bin/env bash
# Makes sure the toolchain of rust-toolchain.toml has its wasm targets. rustup installs a
# missing toolchain on first use, but a toolchain that is already there (say, installed
# without targets) is used as it is, and the wasm builds then fail with "can't find crate
# for `core`". `rustup toolchain install` adds what the file names; it is instant when
# nothing is missing.
set -euo pipefail

if ! command -v rustup >/dev/null; then
  exit 0 # a toolchain without rustup: the build says what is missing
fi
rustup toolchain install >/dev/null 2>&1 || rustup show >/dev/null # rustup < 1.28 installs it on `show`
for target in wasm32-wasip1 wasm32-unknown-unknown; do
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "toolchain: target $target is missing and rustup could not add it" >&2
    exit 1
  fi
done
