#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# /extra.sh of the kernel-modes guest, run by guest_init.sh once per mode with the module
# loaded: mounts the host's root read-only over 9p (once), brings up loopback, then
# chroots into the host root to run tests/kernel/guest_modes_check.py with the host's
# venv (a real `mlos-core serve` per mode); that script prints MLOS-MODES-JSON lines.
mode=$1
r() { echo "MLOS-RESULT $*"; }
arg() { sed -n "s/.*mlos\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
H=/mnt/host
REPO=$(arg repo)
if [ ! -e /tmp/ninep-mounted ]; then
    touch /tmp/ninep-mounted
    for m in /modules/*.ko; do insmod "$m" || r ninep insmod_fail "$m"; done
    mkdir -p $H
    if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot $H; then
        r ninep mount ok
    else
        r ninep mount fail
        exit 0
    fi
    mount -t proc proc $H/proc
    mount -t sysfs sysfs $H/sys
    mount -t devtmpfs devtmpfs $H/dev
    mount -t tmpfs tmpfs $H/tmp
    mkdir -p $H/dev/shm && mount -t tmpfs tmpfs $H/dev/shm
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
fi
inhost() {
    chroot $H /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
        OMP_NUM_THREADS=1 /bin/sh -c "cd $REPO && $*"
}
SCRIPT=$(arg modes_script)
inhost .venv/bin/python "${SCRIPT:-tests/kernel/guest_modes_check.py}" "$mode" > /tmp/modes 2>&1
r "$mode" modes_rc $?
grep -v '^MLOS-MODES-JSON' /tmp/modes | tail -30 | sed "s/^/MLOS-MODESLOG $mode /"
grep '^MLOS-MODES-JSON' /tmp/modes
