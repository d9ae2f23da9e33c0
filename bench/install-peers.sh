#!/usr/bin/env bash
# Install the peers `make bench` compares parley with, each in its own virtual environment under
# bench/ (never a parley dependency): LiteLLM's proxy in bench/.peers-venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
venv="$here/.peers-venv"
if [ ! -x "$venv/bin/litellm" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q 'litellm[proxy]'
fi
"$venv/bin/litellm" --version 2>/dev/null || "$venv/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'
