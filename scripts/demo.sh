#!/usr/bin/env bash
# The main job. Until the training demo lands, it starts every service locally and prints health.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/torl up --check
