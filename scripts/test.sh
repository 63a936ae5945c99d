#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets up this machine (idempotent) and runs the whole test suite: lint, types, unit,
# kernel (QEMU guests) and images (full mkosi builds booted under QEMU).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not images"` while developing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
./scripts/setup.sh
log "ruff"
"$VENV/bin/ruff" check mlos_core builder tests benchmarks
log "mypy"
"$VENV/bin/mypy"
log "pytest"
exec "$VENV/bin/pytest" "$@"
