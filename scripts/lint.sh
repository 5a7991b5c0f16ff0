#!/usr/bin/env bash
# Lint: ruff (rules and formatting, configured in pyproject.toml) and the import-linter contracts
# (the core never imports the TUI or textual; no import cycles). import-linter reads the installed
# layout (analysis/ -> mergescope, tui/ -> mergescope.tui), so it checks a throwaway non-editable install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m ruff check .
"$PY" -m ruff format --check .
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
"$PY" -m pip install -q --no-deps --no-build-isolation --target "$pkg" . 2>&1 | grep -v "^WARNING" || true
[ -d "$pkg/mergescope" ] || { echo "lint.sh: could not build the package" >&2; exit 1; }
(cd "$pkg" && PYTHONPATH="$pkg" "$PY" -c "from importlinter.cli import lint_imports_command; lint_imports_command()" "$OLDPWD/pyproject.toml")
