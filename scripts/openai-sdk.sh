#!/usr/bin/env bash
# Installs the official OpenAI Python SDK into the project's .venv (next to the PyPI
# Envoy) for tests/sdk.rs, unless it is there already. Prints the venv's python.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=3.60.0
if [[ ! -x "$root/.venv/bin/pip" ]]; then
  python3 -m venv "$root/.venv" >&2
fi
python="$root/.venv/bin/python"
if ! "$python" -c "import openai, sys; sys.exit(openai.__version__ != '$version')" 2>/dev/null; then
  "$root/.venv/bin/pip" install -q "openai==$version" >&2
fi
echo "$python"
