#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
# /init of the flash guest (busybox initramfs): a kernel with device-mapper and loop
# devices, which the CI host's kernel lacks. Loads loop, dm-mod and 9p, mounts the host's
# root (/hostroot.sh), and runs the flash tests that need device-mapper from the
# checkout with the host's venv python in it. Results are "MLOS-RESULT ..." lines on the
# serial console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /hostroot.sh
hostroot_mount || poweroff -f
r dm_control "$(ls $H/dev/mapper/control 2>/dev/null || echo missing)"
inhost "$PY" -m pytest -q -p no:cacheprovider -rs -k "'$(arg tests)'" tests/unit/test_flash.py \
    > /tmp/out 2>&1
r pytest_rc $?
sed 's/^/MLOS-PY /' /tmp/out
poweroff -f
