#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's main job: set up this machine, build the default image (Ubuntu noble,
# variant full) and boot it under QEMU to a healthy service (mlos-build test).
# Extra arguments go to the build, e.g. `--variant userspace` or `--mirror URL`.
# OUTPUT_DIR (default: output) receives the image, its manifest and SHA256SUMS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
./scripts/setup.sh
out="${OUTPUT_DIR:-output}"
log "building the default image into $out/"
image="$("$VENV/bin/mlos-build" ubuntu --variant full --output-dir "$out" "$@" | tail -n1)"
log "booting $image under QEMU and running its smoke test"
"$VENV/bin/mlos-build" test "$image"
log "done: $image (boot it yourself with: $VENV/bin/mlos-build boot $image)"
