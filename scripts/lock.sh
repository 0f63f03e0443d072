#!/usr/bin/env bash
# Refresh requirements.lock, the pinned and hashed set of every Python package the lab installs
# (pyproject.toml's dependencies plus the dev extra). scripts/setup.sh installs from the lock
# only, so a new upstream release changes nothing until this is run and the lock committed.
#   scripts/lock.sh                 re-resolve, keeping the pins that still satisfy pyproject.toml
#   scripts/lock.sh --upgrade       take the newest allowed versions
#   scripts/lock.sh --upgrade-package NAME
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
uv=$here/.venv/bin/uv
[ -x "$uv" ] || { echo "lock: run scripts/setup.sh first (it installs uv into .venv)" >&2; exit 2; }
cd "$here"
"$uv" pip compile pyproject.toml --extra dev --generate-hashes --quiet \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command scripts/lock.sh -o requirements.lock "$@"
echo "lock: requirements.lock written; commit it with the change that needed it" >&2
