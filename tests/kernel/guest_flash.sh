#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
# /init of the flash guest (busybox initramfs): a kernel with device-mapper and loop
# devices, which the CI host's kernel lacks. Loads loop, dm-mod and 9p, mounts the host's
# root read-only over 9p, and runs the flash tests that need device-mapper from the
# repository's venv inside it. Results are "MLOS-RESULT ..." lines on the serial console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
r() { echo "MLOS-RESULT $*"; }
arg() { sed -n "s/.*mlos\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
for m in /modules/*.ko; do insmod "$m" || r insmod_fail "$m"; done
H=/mnt/host
mkdir -p $H
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot $H; then
    r ninep_mount fail
    poweroff -f
fi
mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mount -t tmpfs tmpfs $H/tmp
r dm_control "$(ls $H/dev/mapper/control 2>/dev/null || echo missing)"
chroot $H /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$(arg pythonpath)" /bin/sh -c \
    "cd $(arg repo) && $(arg python) -m pytest -q -p no:cacheprovider -rs -k '$(arg tests)' tests/unit/test_flash.py" \
    > /tmp/out 2>&1
r pytest_rc $?
sed 's/^/MLOS-PY /' /tmp/out
poweroff -f
