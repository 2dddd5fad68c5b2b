#!/usr/bin/env bash
# Set up the venv and run the whole check: lint (ament-style rules via ruff) and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
