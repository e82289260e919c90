#!/usr/bin/env bash
# The static checks, in the order CI runs them; stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy catalog toolkit
