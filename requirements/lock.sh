#!/usr/bin/env bash
# Rewrites the locks from pyproject.toml and requirements/data.in (README: "Updating the lock").
#   requirements/lock.sh                  # keep every pin that still satisfies pyproject.toml; add what is new
#   UPGRADE=1 requirements/lock.sh        # move every package to its newest allowed release
#   UPGRADE_PACKAGE=fastapi requirements/lock.sh   # move one package (and what it drags along)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
upgrade=()
[[ -n "${UPGRADE:-}" ]] && upgrade+=(--upgrade)
[[ -n "${UPGRADE_PACKAGE:-}" ]] && upgrade+=(--upgrade-package "$UPGRADE_PACKAGE")
# --unsafe-package gkd: the dev extra names gkd itself; everything else (pip and setuptools too) is pinned.
"$VENV/bin/pip-compile" --quiet --extra dev --generate-hashes --strip-extras --unsafe-package gkd \
  --no-emit-index-url --no-emit-find-links "${upgrade[@]}" -o requirements/lock.txt pyproject.toml
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
{
  echo "# Written by requirements/lock.sh from data.in; install with --require-hashes --no-deps."
  grep -v '^#' requirements/data.in | grep . | while read -r pin; do
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$scratch/$pin" "$pin" 2>/dev/null
    echo "$pin \\"
    "$VENV/bin/pip" hash "$scratch/$pin"/* | sed -n 's/^--hash=/    --hash=/p'
  done
} > requirements/data.txt
# The images' lock is the same resolution cut to the service's extras (the dependency graph is read from the venv).
"$VENV/bin/pip" install -q --require-hashes -r requirements/lock.txt
"$VENV/bin/python" requirements/lockfile.py subset --extras postgres,redis,s3,onnx -o requirements/service.txt
"$VENV/bin/python" requirements/lockfile.py check
echo "requirements/{lock,service,data}.txt written; now: make install && make test"
