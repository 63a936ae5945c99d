#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
# /init of the sysext guest: merges the MLOS system extension over the host's /usr (shared
# read-only over 9p) the way systemd-sysext does (squashfs on a loop device, an overlay
# with the extension's usr/ above the base's), then runs the extension's own loader in
# that root and reports the module's parameters as sysfs shows them.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
. /hostroot.sh  # the share only: this guest merges its own /usr instead of chrooting there
mkdir -p /ext
if hostroot_9p; then r ninep mount ok; fi
if mount -t squashfs -o loop,ro "$H$(arg sysext)" /ext; then r sysext squashfs ok; fi
if mount -t overlay overlay -o "ro,lowerdir=/ext/usr:$H/usr" $H/usr; then r sysext merged ok; fi
mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mount -t tmpfs tmpfs $H/run
chroot $H /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/libexec/mlos/mlos-ml-load \
    > /tmp/load 2>&1
r load_rc $?
sed "s/^/MLOS-LOAD /" /tmp/load
for p in /sys/module/mlos_ml/parameters/*; do
    [ -e "$p" ] && r param "$(basename "$p")" "$(cat "$p")"
done
# A second run finds it loaded and does nothing.
chroot $H /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/libexec/mlos/mlos-ml-load \
    > /tmp/again 2>&1
r again_rc $? "$(head -n 1 /tmp/again | tr ' ' _)"
r dmesg_bad "$(dmesg | grep -cE 'Oops|BUG:|WARNING:|Call Trace')"
poweroff -f
