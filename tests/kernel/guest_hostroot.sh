# SPDX-License-Identifier: Apache-2.0
# Sourced as /hostroot.sh (mlos_guest.boot_host_root puts it in the initramfs) by the
# guest scripts that use this host's root, shared read-only over 9p with tag hostroot
# (mlos_guest.HOST_ROOT_VIRTFS). hostroot_mount gives the chroot writable /tmp and
# /dev/shm, then puts the host paths in mlos.keep (the checkout, the venv) back at their
# own paths: a checkout under the host's /tmp would be hidden by that tmpfs otherwise.
# inhost runs a command in that root from the checkout (mlos.repo); "$PY" is the
# interpreter the host ran (mlos.python), and PYTHONPATH (mlos.pythonpath) puts the
# checkout's packages before an editable install that points at another checkout.
H=/mnt/host
r() { echo "MLOS-RESULT $*"; }
arg() { sed -n "s/.*mlos\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
PY=$(arg python)

# The share alone (the distribution's 9p modules first); no chroot set-up.
hostroot_9p() {
    for m in /modules/*.ko; do insmod "$m" || r ninep insmod_fail "$m"; done
    mkdir -p $H
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot $H
}

# Once per boot (extra scripts run once per mode); the status of the first call stays.
hostroot_mount() {
    [ -e /tmp/hostroot-ok ] && return 0
    [ -e /tmp/hostroot-tried ] && return 1
    touch /tmp/hostroot-tried
    if hostroot_9p; then r ninep mount ok; else r ninep mount fail; return 1; fi
    keep=$(arg keep | tr , ' ')
    i=0
    for p in $keep; do  # a bind taken before the tmpfs still reaches the 9p directory
        mkdir -p /keep/$i && mount -o bind "$H$p" /keep/$i || r hostroot keep_fail "$p"
        i=$((i + 1))
    done
    mount -t proc proc $H/proc
    mount -t sysfs sysfs $H/sys
    mount -t devtmpfs devtmpfs $H/dev
    mount -t tmpfs tmpfs $H/tmp
    mkdir -p $H/dev/shm && mount -t tmpfs tmpfs $H/dev/shm
    i=0
    for p in $keep; do  # only what a tmpfs now hides; the rest is still the share's
        if [ ! -d "$H$p" ]; then
            mkdir -p "$H$p" && mount -o bind /keep/$i "$H$p" || r hostroot keep_fail "$p"
        fi
        i=$((i + 1))
    done
    touch /tmp/hostroot-ok
}

inhost() {
    chroot $H /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp \
        PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1 PYTHONPATH="$(arg pythonpath)" \
        /bin/sh -c "cd $(arg repo) && $*"
}
