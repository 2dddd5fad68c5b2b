#!/usr/bin/env bash
# Set up the venv and run the main job: the demo on the embedded tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
dvd-ros demo --out out/demo "$@"
