#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything MLOS needs on Debian 12 (apt packages, .venv, test assets).
# Idempotent and fast when already done. Each part lives in scripts/setup.d/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
for part in scripts/setup.d/*.sh; do
    # shellcheck source=/dev/null
    source "$part"
done
log "setup complete"
