#!/usr/bin/env bash
# Refresh the studio screenshots in docs/studio/ (taken by the browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
STUDIO_SCREENSHOTS=docs/studio .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_studio.py \
  -k "speak or book_rows or system" "$@"
