#!/usr/bin/env bash
# Peers for `bench/overhead.py --compare`, each in its own virtual environment (never the
# project's): LiteLLM's proxy, from PyPI. Re-running it upgrades them.
#   bash bench/peers.sh [VENV]        # default: bench/.peers
set -euo pipefail
venv="${1:-$(dirname "$0")/.peers}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q --upgrade 'litellm[proxy]'
"$venv/bin/litellm" --version 2>/dev/null || "$venv/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'
echo "peers installed in $venv: python bench/overhead.py --compare --peers $venv"
