#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# /extra.sh of the kernel-modes guest, run by guest_init.sh once per mode with the module
# loaded: mounts the host's root (once, /hostroot.sh), brings up loopback, then runs
# tests/kernel/guest_modes_check.py (or mlos.modes_script) with the host's venv python in
# it from the checkout (a real `mlos-core serve` per mode); that script prints
# MLOS-MODES-JSON lines.
mode=$1
. /hostroot.sh
hostroot_mount || exit 0
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
SCRIPT=$(arg modes_script)
inhost "$PY" "${SCRIPT:-tests/kernel/guest_modes_check.py}" "$mode" > /tmp/modes 2>&1
r "$mode" modes_rc $?
grep -v '^MLOS-MODES-JSON' /tmp/modes | tail -30 | sed "s/^/MLOS-MODESLOG $mode /"
grep '^MLOS-MODES-JSON' /tmp/modes
