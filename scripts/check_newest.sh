#!/usr/bin/env bash
# The newest releases that pyproject.toml's ranges allow, tested as a newcomer's machine would get them: a fresh
# clone of HEAD, a new virtual environment, the README's test command without constraints.txt. Run it before a
# release and whenever a dependency publishes (README, "Dependencies"); if it passes, move the pins forward with
# `python scripts/update_constraints.py`; if it fails, the failure is a new release's, not a defect of the tested set.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git clone --quiet "$root" "$scratch/spikegpt"
python3 -m venv "$scratch/venv"
cd "$scratch/spikegpt"
"$scratch/venv/bin/python" -m pip install --quiet -e ".[test]"
"$scratch/venv/bin/python" -m pip freeze --exclude-editable | grep -iE '^(transformers|tokenizers|accelerate|datasets|kernels|fastapi|uvicorn)==' || true
PATH="$scratch/venv/bin:$PATH" pytest "$@"
