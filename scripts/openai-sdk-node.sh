#!/usr/bin/env bash
# Installs the official OpenAI Node SDK into the project's .node (for tests/sdk.rs), unless
# that version is there already; once installed, it needs no network. Prints the folder of
# its node_modules, for NODE_PATH.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# 6.x: the 7.x line needs Node 22, and Debian 12 ships Node 18.
version=6.49.0
prefix="$root/.node"
if ! command -v node >/dev/null; then
  echo "openai-sdk-node: node is required (apt-get install nodejs npm)" >&2
  exit 1
fi
installed=$(node -p "require('$prefix/node_modules/openai/package.json').version" 2>/dev/null || true)
if [[ "$installed" != "$version" ]]; then
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --no-save --silent "openai@$version" >&2
fi
echo "$prefix/node_modules"
